"""What a stage does at a step boundary, given the control commands that arrived during the step.

The stage process reads its control file at every step boundary (a ``stat`` when nothing came)
and hands the new lines here. The result says whether to checkpoint, whether to stop and why,
and by what factor to scale the learning rate; each command becomes one ``ActionApplied``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# The control command types (libs/events messages/agent.py) and the action each one applies.
ACTIONS: dict[str, str] = {
    "PauseStage": "pause",
    "ResumeStage": "resume",
    "AdjustLearningRate": "adjust_learning_rate",
    "ForceCheckpoint": "force_checkpoint",
    "CancelStage": "cancel",
}


@dataclass(frozen=True, slots=True)
class Applied:
    action_id: str
    action: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StepDirective:
    save: bool = False
    stop: Literal["pause", "cancel"] | None = None
    lr_factor: float = 1.0
    applied: tuple[Applied, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.applied


def at_step_boundary(
    commands: Iterable[Mapping[str, Any]], already_applied: frozenset[str] = frozenset()
) -> StepDirective:
    """Combine the commands read at one boundary. Cancel wins over pause (no checkpoint is
    needed to throw a run away); factors multiply; a command id seen before is skipped."""
    save = False
    stop: Literal["pause", "cancel"] | None = None
    factor = 1.0
    applied: list[Applied] = []
    seen = set(already_applied)
    for command in commands:
        action = ACTIONS.get(str(command.get("type")))
        action_id = str(command.get("action_id", ""))
        if action is None or action == "resume" or action_id in seen:
            continue
        seen.add(action_id)
        details: dict[str, Any] = {}
        if action == "adjust_learning_rate":
            value = command.get("factor")
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                continue  # a factor that is not a positive number is not applied
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
        if command.get("reason"):
            details["reason"] = command["reason"]
        applied.append(Applied(action_id, action, details))
    if stop == "cancel":
        save = any(a.action == "force_checkpoint" for a in applied)
    return StepDirective(save=save, stop=stop, lr_factor=factor, applied=tuple(applied))
