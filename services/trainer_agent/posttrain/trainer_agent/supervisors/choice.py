"""Which supervisor runs a stage, from its RunStage payload."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from posttrain.events.tasks import stage_config
from posttrain.trainer_agent.ranks import stage_ranks

LOCAL = "local"
SSH = "ssh"
RANKS = "ranks"


def supervisor_for(run: Mapping[str, Any]) -> str:
    """The ``Supervisor.name`` that runs this stage: ``ssh`` for ``run_mode: ssh`` (its ranks, if
    any, start on the remote host), ``ranks`` for a training stage of several processes
    (``resources.gpus > 1`` or ``nproc_per_node``), else ``local``. A stage whose rank count is
    not valid runs locally, where its stage process reports the error."""
    config = stage_config(run.get("params") or {})
    if config.get("run_mode") == SSH:
        return SSH
    gpus = int((run.get("resources") or {}).get("gpus") or 0)
    try:
        ranks = stage_ranks(str(run.get("task")), config, gpus)
    except ValueError:
        return LOCAL
    return RANKS if ranks > 1 else LOCAL
