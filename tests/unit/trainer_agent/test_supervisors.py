"""The local supervisor keeps the ``Supervisor`` contract (supervisors/base.py) with real
processes: started in their own session, found alive by (pid, start time), signalled as a
group; a launcher that cannot start raises ``SupervisorError``."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from posttrain.trainer_agent.launcher import ProcessId, start_time
from posttrain.trainer_agent.supervisors.base import (
    LaunchRequest,
    StageHandle,
    Supervisor,
    SupervisorError,
)
from posttrain.trainer_agent.supervisors.local import LocalSupervisor
from tests.waiting import wait_for


class SleepLauncher:
    """Starts ``sleep`` instead of a stage process (the supervisor does not care which)."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def launch(self, attempt_dir: Path, launch: int, env: Mapping[str, str], cwd: str) -> ProcessId:
        child = subprocess.Popen(["sleep", "30"], cwd=cwd, start_new_session=True)
        self.children.append(child)
        return ProcessId(child.pid, start_time(child.pid) or 0)

    def reap(self) -> None:
        self.children = [c for c in self.children if c.poll() is None]

    def close(self) -> None:
        for child in self.children:
            child.kill()
            child.wait()


class BrokenLauncher(SleepLauncher):
    def launch(self, attempt_dir: Path, launch: int, env: Mapping[str, str], cwd: str) -> ProcessId:
        raise RuntimeError("the stage zygote could not fork: EAGAIN")


def _request(tmp_path: Path) -> LaunchRequest:
    return LaunchRequest(tmp_path, 1, {}, str(tmp_path))


async def test_a_local_stage_is_started_watched_and_signalled(tmp_path: Path):
    launcher = SleepLauncher()
    supervisor = LocalSupervisor(launcher)
    assert isinstance(supervisor, Supervisor)
    try:
        handle = await supervisor.start(_request(tmp_path))
        assert handle.supervisor == "local" and handle.start > 0
        assert await supervisor.alive(handle)
        # A reused pid (another start time) is not our process.
        assert not await supervisor.alive(StageHandle("local", handle.pid, handle.start + 1))
        await supervisor.push(handle, tmp_path)  # nothing to copy for a local process
        await supervisor.pull(handle, tmp_path)
        await supervisor.signal(handle, "term")

        async def ended() -> bool:
            supervisor.reap()
            return not await supervisor.alive(handle)

        await wait_for(ended, timeout=10, what="the stage process ended")
        await supervisor.signal(handle, "kill")  # an ended process: nothing happens
    finally:
        launcher.close()


async def test_a_launcher_that_cannot_start_raises_supervisor_error(tmp_path: Path):
    supervisor = LocalSupervisor(BrokenLauncher())
    with pytest.raises(SupervisorError, match="could not fork"):
        await supervisor.start(_request(tmp_path))
