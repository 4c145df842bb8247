"""The ranks supervisor: a training stage run as N local processes, one per GPU (or per
``nproc_per_node`` on a CPU host, gloo).

The stage process is started as a local one (the local supervisor's launcher); seeing that its
stage has several ranks (``ranks.stage_ranks``), it runs torch's elastic launcher in-process
(``rank_launch``), which starts one process per rank in the stage's process group, so that a
signal to the group reaches every rank at once, and a rank that fails stops the others. Rank 0
reads the control file, reports the metrics and writes the events and the result; every control
is broadcast to the other ranks and applied by all at the same step (``ranks``). The handle
records how many ranks run.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from posttrain.events.tasks import stage_config
from posttrain.trainer_agent.ranks import stage_ranks
from posttrain.trainer_agent.supervisors.base import LaunchRequest, StageHandle, StopSignal
from posttrain.trainer_agent.supervisors.local import LocalSupervisor


class RanksSupervisor:
    """N ranks of one stage, through the local supervisor's launcher (see the docstring)."""

    name = "ranks"

    def __init__(self, local: LocalSupervisor) -> None:
        self.local = local  # owns the launcher: reaps and closes it

    async def start(self, request: LaunchRequest) -> StageHandle:
        handle = await self.local.start(request)
        run = request.run
        config = stage_config(run.get("params") or {})
        gpus = int((run.get("resources") or {}).get("gpus") or 0)
        ranks = stage_ranks(str(run.get("task")), config, gpus)
        return replace(handle, supervisor=self.name, extra={"ranks": ranks})

    async def alive(self, handle: StageHandle) -> bool:
        return await self.local.alive(handle)

    async def signal(self, handle: StageHandle, sig: StopSignal) -> None:
        await self.local.signal(handle, sig)  # the group: every rank

    async def push(self, handle: StageHandle, attempt_dir: Path) -> None:
        return None  # rank 0 reads the agent's own control file

    async def pull(self, handle: StageHandle, attempt_dir: Path) -> None:
        return None  # rank 0 writes into the agent's own attempt directory

    def reap(self) -> None:
        return None  # the local supervisor reaps the launcher's children

    def close(self) -> None:
        return None  # the local supervisor closes the launcher
