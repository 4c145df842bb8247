"""A Hugging Face ``TrainerCallback`` that connects any HF/TRL trainer to the platform.

In a script of your own::

    from posttrain.trainer_agent.hf_callback import PosttrainCallback
    trainer = SFTTrainer(..., callbacks=[PosttrainCallback(job_id="job-42")])

- Every step is logged (``logging_steps`` is set to 1 when training begins) and TRL's names are
  mapped to the canonical fields by the reporter; everything else is kept under ``custom``.
- NaN losses are not hidden: HF's ``logging_nan_inf_filter`` (which replaces a NaN loss by the
  running average) is turned off.
- Tokens per second are derived from TRL's ``num_tokens``; GPU memory and utilization are
  measured where a GPU exists.
- Under the agent, control commands are applied at the step boundary (``on_step_end``): the
  learning rate is scaled in the optimizer's groups and the scheduler's base rates, a checkpoint
  is forced with ``should_save``, a pause or cancel stops with ``should_training_stop``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Protocol

from transformers import TrainerCallback

from posttrain.trainer_agent.core.control import Applied, StepDirective
from posttrain.trainer_agent.reporting import create_training_callback

# Logged once at the end of training by HF, not a step's measurement.
_SUMMARY_KEYS = frozenset(
    {
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
        "train_loss",
        "total_flos",
    }
)


class Report(Protocol):
    def __call__(self, step: int, epoch: float | None = None, **fields: Any) -> None: ...


class StageControls(Protocol):
    """What the callback needs from the stage it runs in (``tasks.context.StageContext``)."""

    def poll_control(self) -> StepDirective: ...
    def action_applied(self, applied: Applied, step: int) -> None: ...
    def checkpoint_saved(self, step: int, path: str, reason: str) -> None: ...
    def stopping(self, reason: str, step: int) -> None: ...


class PosttrainCallback(TrainerCallback):
    def __init__(
        self,
        report: Report | None = None,
        *,
        job_id: str | None = None,
        stage: StageControls | None = None,
        every_step: bool = True,
    ) -> None:
        if report is None:
            if job_id is None:
                raise ValueError("PosttrainCallback needs a reporter or a job_id")
            report = create_training_callback(job_id)
        self.report = report
        self.stage = stage
        self.every_step = every_step
        self.summary: dict[str, float] = {}
        self.last_logs: dict[str, Any] = {}
        self._save_reason: str | None = None
        self._tokens: tuple[float, float] | None = None  # (num_tokens, time) at the last log

    # --- metrics ------------------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.every_step:
            state.logging_steps = 1
        # HF replaces a NaN/inf loss by the running average when this is on: a NaN would never
        # reach the diagnostics. Read at every step, so turning it off here takes effect.
        try:
            args.logging_nan_inf_filter = False
        except (AttributeError, TypeError):  # frozen arguments: say so in the points
            self.summary["nan_filter_on"] = 1.0

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if not logs:
            return
        fields = {k: v for k, v in logs.items() if k not in _SUMMARY_KEYS}
        self.summary.update(
            {k: float(v) for k, v in logs.items() if k in _SUMMARY_KEYS and _is_number(v)}
        )
        if not fields or set(fields) <= {"epoch"}:
            return
        epoch = fields.pop("epoch", None)
        now = time.monotonic()
        tokens = fields.get("num_tokens")
        if isinstance(tokens, int | float) and not isinstance(tokens, bool):
            if self._tokens is not None and now > self._tokens[1] and tokens > self._tokens[0]:
                fields["tokens_per_second"] = (tokens - self._tokens[0]) / (now - self._tokens[1])
            self._tokens = (float(tokens), now)
        fields.update(_gpu_fields())
        self.last_logs = fields
        self.report(step=int(state.global_step), epoch=epoch, **fields)

    # --- control ------------------------------------------------------------------------------

    def on_step_end(
        self,
        args: Any,
        state: Any,
        control: Any,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        **kwargs: Any,
    ) -> None:
        if self.stage is None:
            return
        directive = self.stage.poll_control()
        if directive.empty:
            return
        step = int(state.global_step)
        if directive.lr_factor != 1.0:
            scale_learning_rate(optimizer, lr_scheduler, directive.lr_factor)
        if directive.save:
            control.should_save = True
            self._save_reason = directive.stop or "forced"
        if directive.stop is not None:
            control.should_training_stop = True
            self.stage.stopping(directive.stop, step)
        for applied in directive.applied:
            self.stage.action_applied(applied, step)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stage is None:
            return
        step = int(state.global_step)
        path = f"{args.output_dir}/checkpoint-{step}"
        self.stage.checkpoint_saved(step, path, self._save_reason or "scheduled")
        self._save_reason = None


def scale_learning_rate(optimizer: Any, lr_scheduler: Any, factor: float) -> None:
    """Scale the rate now and for the rest of the schedule.

    Schedulers such as LambdaLR recompute each step's rate from ``base_lrs``: scaling only the
    optimizer's groups would be undone at the next scheduler step. ``_last_lr`` is what HF logs
    as ``learning_rate`` for the next step, so it is scaled too."""
    if optimizer is not None:
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * factor
    if lr_scheduler is not None:
        if hasattr(lr_scheduler, "base_lrs"):
            lr_scheduler.base_lrs = [lr * factor for lr in lr_scheduler.base_lrs]
        last = getattr(lr_scheduler, "_last_lr", None)
        if isinstance(last, list):
            lr_scheduler._last_lr = [lr * factor for lr in last]


def _gpu_fields() -> dict[str, float]:
    import torch

    if not torch.cuda.is_available():
        return {}
    fields = {"gpu_memory_allocated_gb": torch.cuda.memory_allocated() / 2**30}
    with contextlib.suppress(Exception):  # needs NVML (pynvml), absent on some nodes
        fields["gpu_utilization_percent"] = float(torch.cuda.utilization())
    return fields


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
