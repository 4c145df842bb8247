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
- A rollback (the trainer ``attach``-ed) goes back, before the next step's batches are drawn,
  to the last good checkpoint saved before the anomaly's step: model, optimizer, scheduler and
  RNG state and the step counter, then skips the asked number of batches and goes on.
- Each checkpoint gets a marker saying whether its weights and its step's loss are finite
  (``checkpoint_files``): a poisoned one is never gone back to, nor resumed from.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from transformers import TrainerCallback

from posttrain.trainer_agent.checkpoint_files import non_finite_parts, write_marker
from posttrain.trainer_agent.core.checkpoints import Checkpoint
from posttrain.trainer_agent.core.control import Rollback
from posttrain.trainer_agent.reporting import create_training_callback

if TYPE_CHECKING:
    # The stage the callback runs in under the agent (a plain script has none): its methods are
    # the callback's interface to it, declared there once.
    from posttrain.trainer_agent.tasks.context import StageContext

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


@dataclass(frozen=True, slots=True)
class _PendingRollback:
    rollback: Rollback
    target: Checkpoint
    from_step: int


class PosttrainCallback(TrainerCallback):
    def __init__(
        self,
        report: Report | None = None,
        *,
        job_id: str | None = None,
        stage: StageContext | None = None,
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
        self._trainer: Any = None
        self._draw_batches: Any = None  # the trainer's own get_batch_samples
        self._rollback: _PendingRollback | None = None

    def attach(self, trainer: Any) -> None:
        """Let this callback roll ``trainer`` back: HF gives callbacks no way to reload a
        checkpoint or to skip data, so the rollback happens where the trainer draws the next
        step's batches (``get_batch_samples``), after the current step is logged and saved."""
        self._trainer = trainer
        self._draw_batches = trainer.get_batch_samples
        trainer.get_batch_samples = self._get_batch_samples

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
        step = int(state.global_step)
        directive = self.stage.poll_control(step)
        if directive.empty:
            return
        if directive.rollback is not None:
            if directive.stop is not None:
                self.stage.action_refused(
                    directive.rollback.action_id,
                    "rollback",
                    step,
                    f"the stage stops at this step ({directive.stop})",
                )
            else:
                self._plan_rollback(directive.rollback, step)
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

    def on_save(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        step = int(state.global_step)
        path = f"{args.output_dir}/checkpoint-{step}"
        # Marked so that nothing goes back to, or on from, weights that hold a NaN.
        non_finite = non_finite_parts(model, self.last_logs.get("loss"))
        # Written by rank 0 alone (it wrote the weights); not rotated away already (a file
        # beside it would confuse HF).
        if state.is_world_process_zero and Path(path).is_dir():
            with contextlib.suppress(OSError):
                write_marker(path, step, non_finite)
        if self.stage is None:
            return
        self.stage.checkpoint_saved(step, path, self._save_reason or "scheduled", non_finite)
        self._save_reason = None

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        pending, self._rollback = self._rollback, None
        if pending is not None and self.stage is not None:
            self.stage.action_refused(
                pending.rollback.action_id,
                "rollback",
                pending.from_step,
                f"training ended at step {pending.from_step} before it could go back",
            )

    # --- rollback -----------------------------------------------------------------------------

    def _plan_rollback(self, rollback: Rollback, step: int) -> None:
        assert self.stage is not None
        target = self.stage.rollback_target(rollback, step)
        trainer = self._trainer
        reason = None
        if trainer is None:
            reason = "this trainer cannot roll back (PosttrainCallback.attach was not called)"
        elif trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
            reason = "rolling back in place is not supported with DeepSpeed or FSDP"
        elif target is None:
            before = rollback.step if rollback.step is not None else step
            reason = f"no checkpoint with finite weights was saved before step {before}"
        elif self._rollback is not None:
            reason = f"rollback {self._rollback.rollback.action_id} is under way"
        if reason is not None:
            self.stage.action_refused(rollback.action_id, "rollback", step, reason)
            return
        assert target is not None
        self._rollback = _PendingRollback(rollback, target, step)

    def _get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> Any:
        pending, self._rollback = self._rollback, None
        if pending is not None:
            restored = restore_checkpoint(self._trainer, pending.target.path)
            per_step = max(1, int(self._trainer.args.gradient_accumulation_steps))
            # Within this epoch: skipping a whole epoch would end HF's training loop.
            skipped = 0
            for _ in range(pending.rollback.skip_batches * per_step):
                try:
                    next(epoch_iterator)
                except StopIteration:
                    break
                skipped += 1
            assert self.stage is not None
            self.stage.rolled_back(
                pending.rollback, pending.from_step, pending.target, skipped // per_step, restored
            )
        return self._draw_batches(epoch_iterator, num_batches, device)


def restore_checkpoint(trainer: Any, checkpoint: str) -> tuple[str, ...]:
    """Put ``trainer`` back to ``checkpoint`` (a ``checkpoint-<step>`` directory it saved):
    model weights, optimizer, scheduler and RNG state, and the step counter. Returns what was
    restored (a checkpoint saved with ``save_only_model`` has weights only).

    Uses the Trainer's own loaders (private, stable since transformers 4.x): the same code that
    ``train(resume_from_checkpoint=...)`` runs."""
    import torch
    from transformers.trainer_callback import TrainerState

    folder = Path(checkpoint)
    trainer._load_from_checkpoint(str(folder))
    restored = ["model"]
    if (folder / "optimizer.pt").exists() and (folder / "scheduler.pt").exists():
        trainer._load_optimizer_and_scheduler(str(folder))
        restored += ["optimizer", "scheduler"]
    if (folder / "rng_state.pth").exists():
        trainer._load_rng_state(str(folder))
        restored.append("rng")
    step = TrainerState.load_from_json(str(folder / "trainer_state.json")).global_step
    trainer.state.global_step = step
    # The loss accumulated since the last log belongs to the abandoned steps, and the next log
    # is of step + 1.
    trainer._globalstep_last_logged = step
    if isinstance(getattr(trainer, "_tr_loss", None), torch.Tensor):
        trainer._tr_loss.zero_()
    return tuple(restored)


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
