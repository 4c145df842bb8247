"""Faults injected into a real Hugging Face run, through ``train_model``'s ``callbacks`` config:

    "callbacks": [{"entrypoint": "posttrain.testing.hf_faults:Inject",
                   "kwargs": {"spike_at": 25, "step_s": 0.3}}]

Each fault happens once per job, even across relaunches and rollbacks (a marker file in the run's
output directory), as a real one-off fault would.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback


class Inject(TrainerCallback):
    """- ``spike_at``: before that step, Gaussian noise (std ``spike_std``) is added to every
      weight, so the loss of that step spikes and stays high until the run goes back before it;
    - ``nan_at``: before that step, one weight becomes NaN, so the loss and, after that step's
      update, every weight are NaN;
    - ``step_s`` paces the run (a step of a real model takes time; the platform acts while the
      run still goes);
    - ``release_file``: the test's hand on the clock. Until that file exists, ``step_s`` paces
      the run and the run waits at the end of step ``hold_at``; once the test creates it (it
      has done what had to happen while the run went on), the run goes at full speed. A test
      that must act mid-run thus holds the run however fast the machine trains, and does not
      wait for a slow pace longer than it needs. A hold ends after ``hold_s`` in any case: a
      test that fails before its release leaves no stage process waiting for ever."""

    def __init__(
        self,
        spike_at: int | None = None,
        spike_std: float = 0.5,
        nan_at: int | None = None,
        step_s: float = 0.0,
        release_file: str | None = None,
        hold_at: int | None = None,
        hold_s: float = 900.0,
    ) -> None:
        if hold_at is not None and release_file is None:
            raise ValueError("hold_at needs a release_file: nothing would end the hold")
        self.spike_at = spike_at
        self.spike_std = spike_std
        self.nan_at = nan_at
        self.step_s = step_s
        self.release_file = Path(release_file) if release_file is not None else None
        self.hold_at = hold_at
        self.hold_s = hold_s

    @staticmethod
    def _once(output_dir: str, what: str) -> bool:
        marker = Path(output_dir) / f".posttrain-injected-{what}"
        if marker.exists():
            return False
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        return True

    def on_step_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        step = int(state.global_step) + 1  # the step about to run
        if step == self.spike_at and self._once(args.output_dir, f"spike-{step}"):
            generator = torch.Generator().manual_seed(step)
            with torch.no_grad():
                for p in model.parameters():
                    noise = torch.randn(p.shape, generator=generator) * self.spike_std
                    p.add_(noise.to(p.device, p.dtype))
        if step == self.nan_at and self._once(args.output_dir, f"nan-{step}"):
            with torch.no_grad():
                next(iter(model.parameters())).view(-1)[0] = float("nan")

    def _released(self) -> bool:
        return self.release_file is not None and self.release_file.exists()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._released():
            return
        if self.step_s:
            time.sleep(self.step_s)
        if self.hold_at is not None and int(state.global_step) == self.hold_at:
            until = time.monotonic() + self.hold_s
            while not self._released() and time.monotonic() < until:
                time.sleep(0.05)
