"""The agent runs exactly the catalogue's tasks and reads only parameters the catalogue names,
so that the validator never refuses an option a task reads, nor accepts one no task reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from posttrain.events.tasks import TASKS, VerlParams
from posttrain.trainer_agent import tasks as agent_tasks
from posttrain.trainer_agent.tasks import task_for
from posttrain.trainer_agent.tasks.context import StageError

TASK_MODULES = {
    "preprocess_dataset": "preprocess.py",
    "train_model": "train.py",
    "run_evaluation": "evaluate.py",
    "command": "command.py",
    "python": "python_entry.py",
}
# cfg.get("x"), cfg["x"], ctx.config.get("x"), ctx.config["x"], ctx.require("x"), and the typed
# read through the task's params model: params.x (``params.config.x`` in a message is not one).
READ = re.compile(
    r"""(?:cfg|config)(?:\.get\(\s*|\[)"(\w+)"|require\("(\w+)\"|\bparams\.(?!config\b)(\w+)"""
)
# Read by the platform, not by a task: ``run_mode`` and ``ssh_config`` choose the supervisor
# that runs the stage (``supervisors.choice``, ``supervisors.ssh``); ``nproc_per_node`` too, and
# the stage process, which starts the task's ranks (``ranks.stage_ranks``).
NOT_READ_BY_TASKS = {"train_model": {"run_mode", "ssh_config", "nproc_per_node"}}


def test_the_agent_runs_every_task_of_the_catalogue_and_no_other() -> None:
    assert set(TASK_MODULES) == set(TASKS)
    for name in TASKS:
        assert callable(task_for(name))
    with pytest.raises(StageError):
        task_for("not_a_task")


@pytest.mark.parametrize("task", sorted(TASK_MODULES))
def test_every_parameter_a_task_reads_is_in_the_catalogue(task: str) -> None:
    source = (Path(agent_tasks.__file__).parent / TASK_MODULES[task]).read_text()
    read = {a or b or c for a, b, c in READ.findall(source)}
    assert read, f"no parameter reads found in {TASK_MODULES[task]}: the pattern is stale"
    if task == "train_model":
        # A stage on verl (tasks/verl.py) reads its params through the catalogue's model.
        assert set(VerlParams.model_fields) <= TASKS[task].params
        read |= set(VerlParams.model_fields)
    assert read <= TASKS[task].params, sorted(read - TASKS[task].params)
    unread = TASKS[task].params - read - NOT_READ_BY_TASKS.get(task, set())
    assert not unread, f"the catalogue names parameters {task} never reads: {sorted(unread)}"
