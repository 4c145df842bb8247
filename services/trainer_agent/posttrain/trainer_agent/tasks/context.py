"""What a task gets: the command, its configuration, its directories, the metrics reporter and
the control channel of the stage process."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.events.messages import RunStage
from posttrain.trainer_agent.core.control import Applied, StepDirective
from posttrain.trainer_agent.reporting import TrainingCallback
from posttrain.trainer_agent.stage_files import ControlInbox, EventOutbox


class StageError(Exception):
    """A stage cannot run as configured: the message says which field and what was expected."""


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:120] or "_"


def stage_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """The seed's stages put a task's settings under ``params.config``; flat params work too.
    ``config`` wins where both name a key."""
    merged = {k: v for k, v in params.items() if k != "config"}
    nested = params.get("config")
    if isinstance(nested, Mapping):
        merged.update(nested)
    return merged


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
    stop_reason: str | None = None  # "pause" or "cancel" once a control command stopped the run
    stop_step: int | None = None
    last_checkpoint: str | None = None
    last_checkpoint_step: int | None = None

    @property
    def job_dir(self) -> Path:
        path = self.work_dir / "jobs" / safe_name(self.run.job_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def models_dir(self) -> Path:
        return self.work_dir / "models"

    def require(self, key: str, kind: type | tuple[type, ...] = str) -> Any:
        value = self.config.get(key)
        if value is None or not isinstance(value, kind):
            expected = (
                kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            )
            raise StageError(
                f"stage {self.run.stage!r} ({self.run.task}): params.config.{key} is required "
                f"({expected}), got {value!r}"
            )
        return value

    # --- the StageControls protocol of hf_callback -------------------------------------------

    def poll_control(self) -> StepDirective:
        return self.inbox.poll()

    def action_applied(self, applied: Applied, step: int) -> None:
        self.outbox.action_applied(applied.action_id, applied.action, step, applied.details)

    def checkpoint_saved(self, step: int, path: str, reason: str) -> None:
        self.last_checkpoint, self.last_checkpoint_step = path, step
        self.outbox.checkpoint_saved(step, path, reason)

    def stopping(self, reason: str, step: int) -> None:
        self.stop_reason, self.stop_step = reason, step
