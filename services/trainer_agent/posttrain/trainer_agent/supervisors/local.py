"""The local supervisor: a stage process on this host, forked from the zygote (or spawned).

The process is its own session (``launcher``), so it outlives the agent and its whole group is
signalled at once; it reads and writes the agent's attempt directory directly, so ``push`` and
``pull`` have nothing to do.
"""

from __future__ import annotations

import asyncio
import signal as signals
from pathlib import Path

from posttrain.trainer_agent.launcher import (
    Launcher,
    ProcessId,
    ZygoteLauncher,
    is_alive,
    signal_group,
)
from posttrain.trainer_agent.supervisors.base import (
    LaunchRequest,
    StageHandle,
    StopSignal,
    SupervisorError,
)

_SIGNALS = {"term": signals.SIGTERM, "kill": signals.SIGKILL}


def process_of(handle: StageHandle) -> ProcessId:
    """The local process a handle names."""
    return ProcessId(handle.pid, handle.start)


class LocalSupervisor:
    """Runs stage processes on this host through a ``Launcher`` (the zygote by default)."""

    name = "local"

    def __init__(self, launcher: Launcher | None = None) -> None:
        # A launcher given by the caller is the caller's to close.
        self._own_launcher = launcher is None
        self._launcher = launcher

    @property
    def launcher(self) -> Launcher:
        if self._launcher is None:
            self._launcher = ZygoteLauncher()  # it starts importing torch now
        return self._launcher

    async def start(self, request: LaunchRequest) -> StageHandle:
        try:
            process = await asyncio.to_thread(
                self.launcher.launch,
                request.attempt_dir,
                request.launch,
                request.env,
                request.cwd,
            )
        except Exception as exc:
            raise SupervisorError(str(exc)) from exc
        return StageHandle(self.name, process.pid, process.start)

    async def alive(self, handle: StageHandle) -> bool:
        return is_alive(process_of(handle))

    async def signal(self, handle: StageHandle, sig: StopSignal) -> None:
        signal_group(process_of(handle), _SIGNALS[sig])

    async def push(self, handle: StageHandle, attempt_dir: Path) -> None:
        return None  # the process reads the agent's own control file

    async def pull(self, handle: StageHandle, attempt_dir: Path) -> None:
        return None  # the process writes into the agent's own attempt directory

    def reap(self) -> None:
        if self._launcher is not None:
            self._launcher.reap()

    def close(self) -> None:
        if self._own_launcher and self._launcher is not None:
            self._launcher.close()
