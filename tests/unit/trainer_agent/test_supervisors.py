"""The local and ranks supervisors keep the ``Supervisor`` contract (supervisors/base.py) with
real processes: started in their own session, found alive by (pid, start time), signalled as a
group; a launcher that cannot start raises ``SupervisorError``. Which supervisor a stage gets is
decided from its RunStage alone (``supervisors.choice``). The SSH supervisor needs an SSH server:
its tests are in tests/integration/trainer_agent/test_ssh_stage.py."""

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
from posttrain.trainer_agent.supervisors.choice import supervisor_for
from posttrain.trainer_agent.supervisors.local import LocalSupervisor
from posttrain.trainer_agent.supervisors.ranks import RanksSupervisor
from posttrain.trainer_agent.supervisors.ssh import SshSupervisor
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


def _run(task: str = "train_model", gpus: int = 0, **config: object) -> dict[str, object]:
    return {"task": task, "params": {"config": config}, "resources": {"gpus": gpus}}


@pytest.mark.parametrize(
    ("run", "name"),
    [
        (_run(), "local"),
        (_run(gpus=1), "local"),
        (_run(gpus=2), "ranks"),
        (_run(nproc_per_node=2), "ranks"),
        (_run(nproc_per_node=1, gpus=0), "local"),
        (_run(nproc_per_node=0), "local"),  # the stage process reports the bad value
        (_run("run_evaluation", gpus=4), "local"),  # one process, on every GPU it was given
        (_run("command", gpus=2), "local"),  # starts its own processes
        (_run(run_mode="ssh", gpus=2), "ssh"),  # its ranks start on the remote host
        (_run(run_mode="local", gpus=0), "local"),
        ({"task": "train_model", "params": {"run_mode": "ssh"}}, "ssh"),  # flat params
    ],
)
def test_the_supervisor_is_chosen_from_the_run_stage(run, name):
    assert supervisor_for(run) == name


async def test_ranks_run_through_the_local_launcher_under_their_own_name(tmp_path: Path):
    launcher = SleepLauncher()
    local = LocalSupervisor(launcher)
    supervisor = RanksSupervisor(local)
    assert isinstance(supervisor, Supervisor)
    try:
        request = LaunchRequest(tmp_path, 1, {}, str(tmp_path), run=_run(nproc_per_node=3))
        handle = await supervisor.start(request)
        assert (handle.supervisor, dict(handle.extra)) == ("ranks", {"ranks": 3})
        assert await supervisor.alive(handle)
        await supervisor.signal(handle, "kill")

        async def ended() -> bool:
            local.reap()
            return not await supervisor.alive(handle)

        await wait_for(ended, timeout=10, what="the ranks' process group ended")
    finally:
        launcher.close()


def test_the_ssh_supervisor_keeps_the_contract(tmp_path: Path):
    from posttrain.events.kafka import KafkaSettings

    supervisor = SshSupervisor(KafkaSettings(), tmp_path / "spill")
    assert isinstance(supervisor, Supervisor) and supervisor.name == "ssh"
    supervisor.close()  # nothing followed: nothing to release
