"""A ``run_mode: ssh`` training stage, run by a real agent on the "remote" host (Debian's
OpenSSH server on 127.0.0.1, started by the test): the same tiny training as a local stage, its
metrics on the broker once each across a dropped connection and an agent restart, its controls
applied there, cancel ending its whole process group, a wrong host key refused naming the host,
and the key itself nowhere but in the agent host's secret."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from posttrain.events.codec import decode
from posttrain.events.messages import AdjustLearningRate, CancelStage
from posttrain.events.messages.launch import LAUNCH_TYPES, LaunchEnded
from posttrain.events.tasks import SshConfig
from posttrain.events.topics import Topic
from posttrain.testing.sshd import TestSshd
from posttrain.trainer_agent.stage_files import result_path
from tests.integration.trainer_agent.conftest import control_for, tiny_sft
from tests.integration.trainer_agent.topics import TopicReader, points_by_key, reports_for
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

FAULTS = "posttrain.testing.hf_faults:Inject"


def _remote(config: SshConfig, **changes: Any) -> dict[str, Any]:
    """The stage's ssh_config: the test's Python (posttrain installed) on the remote host."""
    remote = config.model_copy(
        update={
            "python": sys.executable,
            "env": {**config.env, "OMP_NUM_THREADS": "1"},
            **changes,
        }
    )
    return remote.model_dump()


def _group_members(pgid: int) -> list[int]:
    """Live processes of a process group (on this host, which is also the remote one)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def _exists(path: str) -> bool:
    return Path(path).exists()


def _text_under(folder: Path) -> str:
    return "\n".join(
        p.read_text(errors="replace")
        for p in folder.rglob("*")
        if p.is_file() and p.stat().st_size < 2_000_000
    )


async def test_a_training_stage_runs_remotely_through_a_dropped_connection_and_obeys_controls(
    start_agent: Any, kafka_settings: Any, sshd: TestSshd, ssh_config: SshConfig, tmp_path: Path
) -> None:
    agent = await start_agent()
    steps = 150
    # Paced (0.2 s a step, 30 s in all) until the control is applied: it reaches a running
    # stage however fast the machine trains, and the rest runs at full speed.
    release = tmp_path / "release"
    pace = {"entrypoint": FAULTS, "kwargs": {"step_s": 0.2, "release_file": str(release)}}
    config = tiny_sft(
        max_steps=steps,
        save_steps=50,
        run_mode="ssh",
        ssh_config=_remote(ssh_config),
        callbacks=[pace],
    )
    run = agent.run_stage("train_model", {"config": config})
    async with (
        TopicReader(kafka_settings, Topic.STAGE_REPORTS) as reports,
        TopicReader(kafka_settings, Topic.METRICS) as metrics,
    ):
        await agent.send(run)
        await metrics.wait(lambda ms: len(points_by_key(ms, run.job_id)) >= 5, timeout=180)
        # The network fails: every connection to the host is cut; the remote run goes on.
        assert sshd.drop_connections() >= 1
        await agent.send(control_for(AdjustLearningRate, run, "lr-1", factor=0.5))
        await reports.wait(
            lambda ms: reports_for(ms, run.command_id, "ActionApplied"),
            timeout=60,
            what="the learning-rate change applied",
        )
        release.touch()
        [done] = await reports.wait(
            lambda ms: reports_for(ms, run.command_id, "StageSucceeded"), timeout=240
        )
        points = await metrics.wait(
            lambda ms: (
                len(points_by_key(ms, run.job_id)) >= steps and points_by_key(ms, run.job_id)
            ),
            what=f"{steps} points of the remote stage",
        )
        messages = reports.messages()

    # Every step once, from one source (the remote file), nothing lost or doubled by the drop.
    assert sorted(p.step for p in points.values()) == list(range(1, steps + 1))
    assert len({source for source, _ in points}) == 1
    assert all(p.loss is not None for p in points.values())
    # The control reached the remote stage and was applied there, at a step boundary.
    [applied] = [m for m in reports_for(messages, run.command_id, "ActionApplied")]
    assert applied.action_id == "lr-1"
    rates = {p.step: p.learning_rate for p in points.values()}
    assert applied.step + 2 <= steps
    assert all(rates[s] == pytest.approx(rates[1]) for s in range(1, applied.step))
    assert all(
        rates[s] == pytest.approx(rates[1] * 0.5) for s in range(applied.step + 2, steps + 1)
    )
    # Outputs name the remote checkpoints; they are on the remote host.
    remote_dir = ssh_config.remote_dir
    assert done.outputs["steps"] == steps
    assert done.outputs["checkpoint"].startswith(remote_dir)
    assert (Path(done.outputs["checkpoint"]) / "config.json").exists()
    saved = reports_for(messages, run.command_id, "CheckpointSaved")
    assert saved and all(m.path.startswith(remote_dir) for m in saved)
    assert [m.TYPE for m in reports_for(messages, run.command_id)].count("StageSucceeded") == 1
    # The remote output came back into the local stage log; the handle is the remote run's.
    [entry] = agent.agent.journal.entries.values()
    assert entry.launch is not None and entry.launch.supervisor == "ssh"
    assert entry.launch.host == "127.0.0.1"
    local_log = (Path(entry.attempt_dir) / "stage.log").read_text()
    assert f"posttrain: train_model {run.command_id} launch 1" in local_log
    # The remote stage's result came back as it wrote it: a codec-encoded LaunchEnded.
    result_file = result_path(Path(entry.attempt_dir), entry.launch.number)
    ended = decode(result_file.read_bytes(), types=LAUNCH_TYPES).data
    assert isinstance(ended, LaunchEnded)
    assert ended.status == "succeeded" and ended.outputs is not None
    assert ended.outputs["checkpoint"] == done.outputs["checkpoint"]
    # The key is a secret of the agent's host: not in the journal, the local files, the reports.
    key_body = sshd.client_key.read_text().splitlines()[1]
    assert key_body not in _text_under(agent.agent.work_dir)
    assert key_body not in _text_under(Path(remote_dir))
    assert all(key_body not in m.model_dump_json() for m in messages)


async def test_a_restarted_agent_reattaches_to_the_remote_run_and_reports_once(
    start_agent: Any, kafka_settings: Any, ssh_config: SshConfig, tmp_path: Path
) -> None:
    agent = await start_agent()
    steps = 80
    # The remote run waits at step 10 until the new agent is up: it re-attaches to a run that
    # still goes, however fast the machine trains the 80 steps.
    release = tmp_path / "release"
    hold = {"entrypoint": FAULTS, "kwargs": {"release_file": str(release), "hold_at": 10}}
    config = tiny_sft(
        max_steps=steps,
        save_steps=0,
        run_mode="ssh",
        ssh_config=_remote(ssh_config),
        callbacks=[hold],
    )
    run = agent.run_stage("train_model", {"config": config})
    async with (
        TopicReader(kafka_settings, Topic.STAGE_REPORTS) as reports,
        TopicReader(kafka_settings, Topic.METRICS) as metrics,
    ):
        await agent.send(run)
        await metrics.wait(lambda ms: len(points_by_key(ms, run.job_id)) >= 5, timeout=180)
        agent.agent.stop()
        await wait_for(agent.agent.stopped.is_set, timeout=30, what="the agent stopped")
        # The remote stage goes on without its agent; a new one on the same work directory
        # re-attaches from the journal and the saved offsets.
        again = await start_agent()
        [entry] = again.agent.journal.entries.values()
        assert entry.launch is not None and _group_members(entry.launch.pid)
        release.touch()
        await reports.wait(
            lambda ms: reports_for(ms, run.command_id, "StageSucceeded"), timeout=240
        )
        points = await metrics.wait(
            lambda ms: (
                len(points_by_key(ms, run.job_id)) >= steps and points_by_key(ms, run.job_id)
            ),
            what=f"{steps} points of the remote stage",
        )
        messages = reports.messages()
    assert sorted(p.step for p in points.values()) == list(range(1, steps + 1))
    assert len({source for source, _ in points}) == 1
    assert [m.TYPE for m in reports_for(messages, run.command_id)].count("StageSucceeded") == 1
    assert again.agent.stats.launches == 0  # re-attached, not launched again


async def test_cancel_ends_the_remote_process_group(
    start_agent: Any, kafka_settings: Any, ssh_config: SshConfig
) -> None:
    # No step boundary is waited for: cancel signals the remote group at once.
    agent = await start_agent(cancel_grace_s=0.0, kill_grace_s=5.0)
    config = tiny_sft(max_steps=5000, save_steps=0, run_mode="ssh", ssh_config=_remote(ssh_config))
    run = agent.run_stage("train_model", {"config": config})
    async with (
        TopicReader(kafka_settings, Topic.STAGE_REPORTS) as reports,
        TopicReader(kafka_settings, Topic.METRICS) as metrics,
    ):
        await agent.send(run)
        await metrics.wait(lambda ms: len(points_by_key(ms, run.job_id)) >= 3, timeout=180)
        [entry] = agent.agent.journal.entries.values()
        assert entry.launch is not None
        group = entry.launch.pid
        assert _group_members(group), "the remote run's process group is running"
        await agent.send(control_for(CancelStage, run, "cancel-1"))
        [failed] = await reports.wait(
            lambda ms: reports_for(ms, run.command_id, "StageFailed"), timeout=60
        )
    assert failed.kind == "cancelled"
    await wait_for(lambda: not _group_members(group), timeout=10, what="the group ended")


async def test_a_wrong_host_key_fails_the_stage_naming_the_host(
    start_agent: Any, kafka_settings: Any, ssh_config: SshConfig, wrong_known_hosts: Path
) -> None:
    agent = await start_agent()
    remote = _remote(ssh_config, known_hosts_file=str(wrong_known_hosts))
    run = agent.run_stage("train_model", {"config": tiny_sft(run_mode="ssh", ssh_config=remote)})
    async with TopicReader(kafka_settings, Topic.STAGE_REPORTS) as reports:
        await agent.send(run)
        [failed] = await reports.wait(
            lambda ms: reports_for(ms, run.command_id, "StageFailed"), timeout=60
        )
    assert f"host key of 127.0.0.1:{ssh_config.port} does not match" in failed.error
    assert not _exists(ssh_config.remote_dir)  # nothing was started there
