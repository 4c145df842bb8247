"""The action vocabulary in one place: which agent command carries each action, and which actions
each kind of stage can take.

Diagnostics asks for actions by ``ActionKind`` (``RequestAction.action``); the orchestrator sends
the command named here for each, and the agent reads the action back from the command's type.
A kind of action without a command here is refused on the record by the orchestrator, never
dropped; ``tests/unit/test_actions.py`` fails if the policy can ask for one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast, get_args

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
from posttrain.events.tasks import CommandAccept, merged_params, uses_verl

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


# What a ``command`` stage may declare in ``params.accepts`` beyond cancel: ``pause`` stops the
# program (SIGTERM to its group) and ``resume`` starts the same argv again, for a program that
# goes on from its own checkpoints when restarted. Nothing else can reach an arbitrary program.
COMMAND_ACCEPTS: frozenset[ActionKind] = frozenset(get_args(CommandAccept))

# A train_model stage run by verl (PPO, or GRPO with ``backend: verl``): verl has no callback, so
# the agent stops it and relaunches it from its last checkpoint (pause/resume, a new learning
# rate). verl saves only every ``trainer.save_freq`` steps and cannot roll back on its own.
VERL_ACTIONS: frozenset[ActionKind] = frozenset(
    {"pause", "resume", "adjust_learning_rate", "cancel"}
)
VERL_REFUSALS: Mapping[str, str] = {
    "force_checkpoint": "verl saves only every save_steps steps (trainer.save_freq) and has "
    "no way to save on demand",
    "rollback": "verl's stage does not roll back yet: pause, then resume from a checkpoint",
}


def stage_actions(task: str, params: Mapping[str, object]) -> frozenset[ActionKind]:
    """The actions a stage of ``task`` with these params takes: the task's own set, verl's for
    a train_model stage on verl, and for a ``command`` stage cancel plus what it declares in
    ``accepts`` (resume comes with pause)."""
    config = merged_params(params)
    if task == "train_model" and uses_verl(config):
        return VERL_ACTIONS
    if task == "command":
        declared = config.get("accepts")
        accepted = (
            {a for a in declared if a in COMMAND_ACCEPTS} if isinstance(declared, list) else set()
        )
        if "pause" in accepted:
            accepted.add("resume")
        return frozenset({"cancel", *accepted})
    return TASK_ACTIONS.get(task, frozenset())


def refusal_reason(task: str, params: Mapping[str, object], action: str) -> str:
    """Why a stage of ``task`` does not take ``action`` (which ``stage_actions`` leaves out)."""
    allowed = stage_actions(task, params)
    config = merged_params(params)
    takes = f" (it takes {', '.join(sorted(allowed))})" if allowed else ""
    if task == "train_model" and uses_verl(config):
        why = VERL_REFUSALS.get(action, "")
        return f"a train_model stage on verl cannot take {action!r}: {why}{takes}"
    if task == "command":
        return (
            f"a command stage cannot take {action!r}{takes}: its params.accepts declares what "
            f"its program handles beyond cancel (among {', '.join(sorted(COMMAND_ACCEPTS))})"
        )
    return f"a {task} stage cannot take {action!r}{takes}"


def command_for(action: str) -> type[StageControl] | None:
    """The agent command for ``action``, or None when no command carries it."""
    # An unknown name is simply absent: the cast only widens the key type for the lookup.
    return ACTION_COMMANDS.get(cast(ActionKind, action))


def action_of(command: StageControl | str) -> ActionKind | None:
    """The action a control command carries, from the command or its wire name (a control
    line's ``type``); None for a command that carries no action."""
    name = command if isinstance(command, str) else command.TYPE
    return COMMAND_ACTIONS.get(name)
