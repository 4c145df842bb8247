"""What a task gets: the command, its configuration, its directories, the metrics reporter and
the control channel of the stage process."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from posttrain.events.messages import RunStage
from posttrain.events.tasks import TaskParams, merged_params, param_errors
from posttrain.trainer_agent.core.checkpoints import Checkpoint, resume_checkpoint, rollback_target
from posttrain.trainer_agent.core.control import Applied, Rollback, StepDirective
from posttrain.trainer_agent.core.paths import safe_name
from posttrain.trainer_agent.ranks import Ranks
from posttrain.trainer_agent.reporting import TrainingCallback
from posttrain.trainer_agent.stage_files import ControlInbox, EventOutbox

P = TypeVar("P", bound=TaskParams)
T = TypeVar("T")


class StageError(Exception):
    """A stage cannot run as configured: the message says which field and what was expected."""


@dataclass
class StageContext:
    run: RunStage
    attempt_dir: Path
    work_dir: Path
    reporter: TrainingCallback
    inbox: ControlInbox
    outbox: EventOutbox
    resume_from: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    # This process's rank in a multi-process stage: rank 0 reads the controls and decides, every
    # rank applies the same decision at the same step.
    ranks: Ranks = field(default_factory=Ranks)
    stop_reason: str | None = None  # "pause" or "cancel" once a control command stopped the run
    stop_step: int | None = None
    last_checkpoint: str | None = None
    last_checkpoint_step: int | None = None
    # The checkpoints of this run's line, in the order they were saved (or found at the start):
    # what a rollback goes back to and a resume goes on from.
    checkpoints: list[Checkpoint] = field(default_factory=list)
    # Controls handed to the task and not yet reported applied or refused: the next boundary
    # (or the end of the task) refuses them, so that no control goes unanswered.
    _unanswered: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    @property
    def job_dir(self) -> Path:
        path = self.work_dir / "jobs" / safe_name(self.run.job_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def models_dir(self) -> Path:
        return self.work_dir / "models"

    def read_params(self, model: type[P]) -> P:
        """The stage's settings read by its task's params model (libs/events ``tasks``), the
        one the validator checked; a stage that does not fit it (one recorded before a rule
        was added) fails with each field named."""
        try:
            return model.model_validate(merged_params(self.config))
        except ValidationError:
            problems = "; ".join(
                f"params.config.{name}: {message}"
                for name, message in param_errors(self.run.task, self.config)
            )
            raise StageError(
                f"stage {self.run.stage!r} ({self.run.task}): {problems or 'unreadable params'}"
            ) from None

    def required(self, key: str, value: T | None) -> T:
        """``value`` (the param ``key`` read from the stage's params model), which this task
        cannot run without."""
        if value is None:
            raise StageError(
                f"stage {self.run.stage!r} ({self.run.task}): params.config.{key} is required"
            )
        return value

    # --- what hf_callback.PosttrainCallback calls on the stage ---------------------------------

    def poll_control(self, step: int | None = None) -> StepDirective:
        """The controls that arrived since the last boundary (``step``: the step the stage is
        at). Those the task was handed last time and neither applied nor refused are refused
        now: a task that ignores a control says so on the record."""
        self.refuse_unanswered(step, f"the {self.run.task} stage did not apply it")
        # Rank 0 reads the file; every rank gets its directive, at this same step boundary.
        directive = self.ranks.share(self.inbox.poll() if self.ranks.is_main else StepDirective())
        for refused in directive.refused:
            self.outbox.action_refused(refused.action_id, refused.action, step, refused.reason)
        for applied in directive.applied:
            self._unanswered[applied.action_id] = applied.action
        if directive.rollback is not None:
            self._unanswered[directive.rollback.action_id] = "rollback"
        return directive

    def action_applied(self, applied: Applied, step: int) -> None:
        self._unanswered.pop(applied.action_id, None)
        self.outbox.action_applied(applied.action_id, applied.action, step, applied.details)

    def action_refused(self, action_id: str, action: str, step: int | None, reason: str) -> None:
        self._unanswered.pop(action_id, None)
        self.outbox.action_refused(action_id, action, step, reason)

    def refuse_unanswered(self, step: int | None, reason: str) -> None:
        for action_id, action in list(self._unanswered.items()):
            self.action_refused(action_id, action, step, reason)

    def checkpoint_saved(
        self, step: int, path: str, reason: str, non_finite: tuple[str, ...] = ()
    ) -> None:
        self.last_checkpoint, self.last_checkpoint_step = path, step
        self.checkpoints.append(Checkpoint(step, path, tuple(non_finite)))
        self.outbox.checkpoint_saved(step, path, reason, tuple(non_finite))

    def stopping(self, reason: str, step: int) -> None:
        self.stop_reason, self.stop_step = reason, step

    def rollback_target(self, rollback: Rollback, step: int) -> Checkpoint | None:
        """Where ``rollback`` goes from ``step``: the last good checkpoint of this run's line
        saved before the anomaly's step (``step`` when the request names none) that is still
        on disk."""
        before = rollback.step if rollback.step is not None else step
        target = None
        if self.ranks.is_main:
            on_disk = [c for c in self.checkpoints if Path(c.path).exists()]
            target = rollback_target(
                on_disk, before_step=before, rollback_steps=rollback.rollback_steps
            )
        # Every rank goes back to the checkpoint rank 0 chose (or none goes back).
        return self.ranks.share(target)

    def rolled_back(
        self,
        rollback: Rollback,
        from_step: int,
        to: Checkpoint,
        skipped_batches: int,
        restored: tuple[str, ...] = (),
    ) -> None:
        """The loop went back from ``from_step`` to ``to``: report it, and forget the
        checkpoints saved after ``to`` (they belong to the abandoned line)."""
        self.checkpoints = [c for c in self.checkpoints if c.step < to.step] + [to]
        self.last_checkpoint, self.last_checkpoint_step = to.path, to.step
        self._unanswered.pop(rollback.action_id, None)
        details: dict[str, Any] = {
            "from_step": from_step,
            "to_step": to.step,
            "checkpoint": to.path,
            "anomaly_step": rollback.step,
            "skip_batches": rollback.skip_batches,
            "skipped_batches": skipped_batches,
            "restored": list(restored),
        }
        if rollback.reason:
            details["reason"] = rollback.reason
        self.outbox.action_applied(rollback.action_id, "rollback", from_step, details)

    def resume_point(self) -> Checkpoint | None:
        """Where a resume of this stage goes on from: the last saved checkpoint whose weights
        are finite."""
        return resume_checkpoint([c for c in self.checkpoints if Path(c.path).exists()])
