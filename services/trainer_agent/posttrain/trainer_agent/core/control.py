"""What a stage does at a step boundary, given the control commands that arrived during the step.

The stage process reads its control file at every step boundary (a ``stat`` when nothing came)
and hands the new lines here. The result says whether to checkpoint, whether to stop and why,
by what factor to scale the learning rate, and whether to roll back; each command becomes one
``ActionApplied`` once the stage has done it, or one ``ActionRefused`` with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from posttrain.events.actions import action_of


@dataclass(frozen=True, slots=True)
class Applied:
    action_id: str
    action: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Refused:
    """A command the stage does not apply, and why (reported as ActionRefused)."""

    action_id: str
    action: str
    reason: str


@dataclass(frozen=True, slots=True)
class Rollback:
    """Go back to the last good checkpoint saved before ``step`` (None: before the step the
    stage is at), preferring one at least ``rollback_steps`` before it; then skip
    ``skip_batches`` batches. The training loop reports it applied or refused."""

    action_id: str
    step: int | None = None
    rollback_steps: int | None = None
    skip_batches: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StepDirective:
    save: bool = False
    stop: Literal["pause", "cancel"] | None = None
    lr_factor: float = 1.0
    applied: tuple[Applied, ...] = ()
    rollback: Rollback | None = None
    refused: tuple[Refused, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.applied and self.rollback is None and not self.refused


def _optional_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def at_step_boundary(
    commands: Iterable[Mapping[str, Any]], already_applied: frozenset[str] = frozenset()
) -> StepDirective:
    """Combine the commands read at one boundary. Cancel wins over pause (no checkpoint is
    needed to throw a run away); factors multiply; one rollback per boundary (the one going back
    furthest); a command id seen before is skipped. What cannot be applied is refused."""
    save = False
    stop: Literal["pause", "cancel"] | None = None
    factor = 1.0
    applied: list[Applied] = []
    rollbacks: list[Rollback] = []
    refused: list[Refused] = []
    seen = set(already_applied)
    for command in commands:
        action = action_of(str(command.get("type")))
        action_id = str(command.get("action_id", ""))
        if action is None or action == "resume" or action_id in seen:
            continue  # resume relaunches the stage: the agent does it, not the step boundary
        seen.add(action_id)
        details: dict[str, Any] = {}
        if action == "adjust_learning_rate":
            value = command.get("factor")
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                refused.append(
                    Refused(action_id, action, f"factor {value!r} is not a positive number")
                )
                continue
            factor *= float(value)
            details["factor"] = float(value)
        elif action == "force_checkpoint":
            save = True
        elif action == "pause":
            if stop != "cancel":
                stop = "pause"
                save = True
        elif action == "cancel":
            stop = "cancel"
        elif action == "rollback":
            rollbacks.append(
                Rollback(
                    action_id,
                    step=_optional_int(command.get("step")),
                    rollback_steps=_optional_int(command.get("rollback_steps")),
                    skip_batches=max(0, _optional_int(command.get("skip_batches")) or 0),
                    reason=str(command.get("reason") or ""),
                )
            )
            continue
        if command.get("reason"):
            details["reason"] = command["reason"]
        applied.append(Applied(action_id, action, details))
    if stop == "cancel":
        save = any(a.action == "force_checkpoint" for a in applied)
    rollback = None
    if rollbacks:
        # The one that goes back furthest covers the others.
        rollback = min(rollbacks, key=lambda r: (r.step is None, r.step or 0))
        refused += [
            Refused(r.action_id, "rollback", f"rollback {rollback.action_id} covers it")
            for r in rollbacks
            if r is not rollback
        ]
    return StepDirective(
        save=save,
        stop=stop,
        lr_factor=factor,
        applied=tuple(applied),
        rollback=rollback,
        refused=tuple(refused),
    )
