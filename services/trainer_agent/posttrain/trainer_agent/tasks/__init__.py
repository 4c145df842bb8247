"""The tasks a stage runs: ``preprocess_dataset``, ``train_model``, ``run_evaluation``,
``command`` and ``python``. Each takes a ``StageContext`` and returns the stage's outputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from posttrain.events.tasks import uses_verl
from posttrain.trainer_agent.tasks.context import StageContext, StageError

Task = Callable[[StageContext], dict[str, Any]]


def task_for(name: str) -> Task:
    """The task function; imported on demand so that ``command`` never imports torch."""
    if name == "preprocess_dataset":
        from posttrain.trainer_agent.tasks.preprocess import preprocess_dataset

        return preprocess_dataset
    if name == "train_model":
        return _train_model
    if name == "run_evaluation":
        from posttrain.trainer_agent.tasks.evaluate import run_evaluation

        return run_evaluation
    if name == "command":
        from posttrain.trainer_agent.tasks.command import run_command

        return run_command
    if name == "python":
        from posttrain.trainer_agent.tasks.python_entry import run_python

        return run_python
    raise StageError(
        f"unknown task {name!r}: expected preprocess_dataset, train_model, run_evaluation, "
        "command or python"
    )


def _train_model(ctx: StageContext) -> dict[str, Any]:
    """TRL's trainers in this process, or verl supervised as a child process (PPO, or GRPO with
    ``backend: verl``): verl's stage never imports torch here."""
    if uses_verl(ctx.config):
        from posttrain.trainer_agent.tasks.verl import run_verl

        return run_verl(ctx)
    from posttrain.trainer_agent.tasks.train import train_model

    return train_model(ctx)


__all__ = ["StageContext", "StageError", "Task", "task_for"]
