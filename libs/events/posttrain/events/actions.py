"""The action vocabulary in one place: which agent command carries each action, and which actions
each kind of stage can take.

Diagnostics asks for actions by ``ActionKind`` (``RequestAction.action``); the orchestrator sends
the command named here for each, and the agent reads the action back from the command's type.
A kind of action without a command here is refused on the record by the orchestrator, never
dropped; ``tests/unit/test_actions.py`` fails if the policy can ask for one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import get_args

from posttrain.events.messages.agent import (
    AdjustLearningRate,
    CancelStage,
    ForceCheckpoint,
    PauseStage,
    ResumeStage,
    RollbackStage,
    StageControl,
)
from posttrain.events.messages.pipeline import ActionKind

ALL_ACTIONS: frozenset[ActionKind] = frozenset(get_args(ActionKind))

# The agent command that carries out each action.
ACTION_COMMANDS: Mapping[ActionKind, type[StageControl]] = {
    "pause": PauseStage,
    "resume": ResumeStage,
    "adjust_learning_rate": AdjustLearningRate,
    "force_checkpoint": ForceCheckpoint,
    "rollback": RollbackStage,
    "cancel": CancelStage,
}

# The action a command carries, by the command's wire name (how the agent and its stage process
# read a control line back).
COMMAND_ACTIONS: Mapping[str, ActionKind] = {
    cls.TYPE: action for action, cls in ACTION_COMMANDS.items()
}

# The actions a stage of each task can take. Tasks with training steps (``train_model``, and the
# ``python`` task whose function gets the control inbox) take every one; the others stop, and
# nothing else. The stage itself still refuses, on the record, what it cannot do at the time
# (a rollback with no checkpoint before the step, a python function that ignores a control).
TASK_ACTIONS: Mapping[str, frozenset[ActionKind]] = {
    "train_model": ALL_ACTIONS,
    "python": ALL_ACTIONS,
    "command": frozenset({"cancel"}),
    "preprocess_dataset": frozenset({"cancel"}),
    "run_evaluation": frozenset({"cancel"}),
}


_COMMANDS_BY_NAME: Mapping[str, type[StageControl]] = {
    action: cls for action, cls in ACTION_COMMANDS.items()
}


def command_for(action: str) -> type[StageControl] | None:
    """The agent command for ``action``, or None when no command carries it."""
    return _COMMANDS_BY_NAME.get(action)
