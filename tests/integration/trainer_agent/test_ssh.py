"""``run_mode: ssh`` against a real OpenSSH server on 127.0.0.1 (the "remote" host): a job runs
there detached, its metrics file is followed onto the broker, cancel kills its process group,
a dropped connection and a re-attachment lose and double no point, and host keys are checked."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from posttrain.events.codec import decode
from posttrain.events.messages import MetricsReported
from posttrain.events.tasks import SshConfig
from posttrain.events.topics import Topic
from posttrain.testing.sshd import TestSshd
from posttrain.trainer_agent.launcher import start_time
from posttrain.trainer_agent.reporting import MetricsReporter
from posttrain.trainer_agent.supervisors.ssh_connect import HostKeyRefused, SshError
from posttrain.trainer_agent.supervisors.ssh_runner import RemoteLaunch, SshOptions, SshRunner
from tests.integration.trainer_agent.topics import TopicReader, points_by_key
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

# The remote job: writes metric lines with posttrain's file writer, in phases; before phase k>0
# it waits for the file gate-<k> in its run folder (so the test decides what happens between).
JOB = """
import os, sys, time
from posttrain.trainer_agent.metrics_file import create_metrics_file_writer
job, per_phase, phases = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
run = os.environ["POSTTRAIN_RUN_DIR"]
writer = create_metrics_file_writer(job, os.environ["POSTTRAIN_METRICS_DIR"])
step = 0
for phase in range(phases):
    while phase and not os.path.exists(os.path.join(run, f"gate-{phase}")):
        time.sleep(0.02)
    for _ in range(per_phase):
        writer(step=step, loss=1.0 / (step + 1), grad_norm=0.5)
        step += 1
        time.sleep(0.005)
writer.close()
print("done", step, flush=True)
"""

# Starts a grandchild in the same process group, then waits to be cancelled.
STUCK = """
import os, subprocess, sys, time
child = subprocess.Popen(["sleep", "600"])
with open(os.path.join(os.environ["POSTTRAIN_RUN_DIR"], "child.pid"), "w") as fh:
    fh.write(str(child.pid))
print("waiting", flush=True)
time.sleep(600)
"""


def _script(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _reporter(job: str, kafka_settings: Any, tmp_path: Path) -> MetricsReporter:
    return MetricsReporter(
        job,
        pipeline_id="p-ssh",
        stage="train",
        attempt=1,
        settings=kafka_settings,
        spill_dir=tmp_path / "spill",
    )


async def test_a_remote_job_runs_detached_and_its_metrics_arrive_once_across_a_dropped_connection(
    sshd: TestSshd, ssh_config: SshConfig, kafka_settings: Any, tmp_path: Path, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    job = "job-ssh-drop"
    reporter = _reporter(job, kafka_settings, tmp_path)
    output: list[bytes] = []
    state = tmp_path / "agent-state"
    options = SshOptions(poll_s=0.05, status_s=0.3)
    first = SshRunner(ssh_config, state, reporter, on_output=output.append, options=options)
    launch = RemoteLaunch(
        name="pipe-1-train-1-launch1",
        job_id=job,
        argv=[sys.executable, _script(tmp_path, "job.py", JOB), job, "20", "3"],
    )
    run = await first.start(launch)
    gate = Path(run.run_dir)
    async with TopicReader(kafka_settings, Topic.METRICS) as reader:

        async def points(n: int) -> dict[Any, Any]:
            return await reader.wait(
                lambda ms: len(points_by_key(ms, job)) >= n and points_by_key(ms, job),
                timeout=30,
                what=f"{n} points of {job}",
            )

        await points(20)
        # The network fails: every sshd connection process is killed; the run goes on.
        assert sshd.drop_connections() >= 1
        (gate / "gate-1").touch()
        await points(40)
        assert first.reconnections >= 1
        # The agent goes away mid-run and a new one re-attaches from the saved record.
        await first.close()
        second = SshRunner(ssh_config, state, reporter, on_output=output.append, options=options)
        assert (await second.attach(run.to_record())) == run
        (gate / "gate-2").touch()
        outcome = await asyncio.wait_for(second.wait(), 30)
        final = await points(60)
        messages = reader.messages(MetricsReported)
    assert reporter.flush(20)
    reporter.close()

    assert outcome.exit_code == 0
    assert sorted(p.step for p in final.values()) == list(range(60))  # no gap, no double
    assert {seq for _, seq in final} == set(range(60))  # seq is the line number
    assert len({source for source, _ in final}) == 1
    # A point sent twice (re-read after the re-attachment) is the same point, same values.
    for m in messages:
        if m.job_id == job:
            for i, p in enumerate(m.points):
                assert final[(m.source, m.first_seq + i)].step == p.step
    assert {(m.pipeline_id, m.stage, m.attempt) for m in messages if m.job_id == job} == {
        ("p-ssh", "train", 1)
    }
    assert b"done 60" in b"".join(output)  # the command's output came back
    key_body = sshd.client_key.read_text().splitlines()[1]
    assert key_body not in caplog.text and key_body not in str(run.to_record())


async def test_cancel_kills_the_remote_process_group(
    ssh_config: SshConfig, kafka_settings: Any, tmp_path: Path
) -> None:
    reporter = _reporter("job-ssh-cancel", kafka_settings, tmp_path)
    sup = SshRunner(ssh_config, tmp_path / "state", reporter)
    run = await sup.start(
        RemoteLaunch(
            name="cancel-1",
            job_id="job-ssh-cancel",
            argv=[sys.executable, _script(tmp_path, "stuck.py", STUCK)],
        )
    )
    child_file = Path(run.run_dir) / "child.pid"
    await wait_for(lambda: child_file.exists() and child_file.read_text(), 20, what="child pid")
    child = int(child_file.read_text())
    assert _alive(run.pid) and _alive(child)

    await sup.cancel(grace_s=10)
    outcome = await asyncio.wait_for(sup.wait(), 20)
    reporter.close()

    assert not _alive(run.pid) and not _alive(child)  # the whole group, grandchild included
    assert outcome.exit_code == 143  # the command ended on SIGTERM, the wrapper recorded it


# A stand-in stage: reads its uploaded spec, waits for a control line, records a checkpoint in
# events.jsonl (as a local stage process does) and writes its result file.
STAGE = r"""
cat spec.json
while [ ! -s control.jsonl ]; do sleep 0.05; done
cat control.jsonl
mkdir -p ckpt/checkpoint-3
ckpt="$PWD/ckpt/checkpoint-3"
echo '{"type":"CheckpointSaved","step":3,"path":"'"$ckpt"'","reason":"forced"}' >> events.jsonl
echo '{"status":"succeeded","outputs":{"model":"'"$ckpt"'"}}' > result.json
"""


async def test_control_events_outputs_and_files_travel_both_ways(
    ssh_config: SshConfig, kafka_settings: Any, tmp_path: Path
) -> None:
    reporter = _reporter("job-ssh-control", kafka_settings, tmp_path)
    output: list[bytes] = []
    events: list[dict[str, Any]] = []
    sup = SshRunner(
        ssh_config, tmp_path / "state", reporter, on_output=output.append, on_event=events.append
    )
    run = await sup.start(
        RemoteLaunch(
            name="control-1",
            job_id="job-ssh-control",
            argv=["sh", "-c", STAGE],
            files={"spec.json": b'{"stage": "train"}\n'},
        )
    )
    await sup.control({"type": "ForceCheckpoint", "action_id": "a1", "reason": "test"})
    outcome = await asyncio.wait_for(sup.wait(), 20)
    reporter.close()

    checkpoint = f"{run.run_dir}/ckpt/checkpoint-3"
    assert outcome.exit_code == 0
    assert outcome.checkpoints == (checkpoint,)
    assert outcome.result == {"status": "succeeded", "outputs": {"model": checkpoint}}
    assert [e["type"] for e in events] == ["CheckpointSaved"] and events[0]["step"] == 3
    text = b"".join(output).decode()
    assert '{"stage": "train"}' in text  # the uploaded file was there before the start
    assert '"action_id":"a1"' in text and '"type":"ForceCheckpoint"' in text


def _report(line: dict[str, Any]) -> dict[str, Any]:
    """A line of the remote events file as fields: a stage process writes each report as the
    codec writes a message (type, version, data)."""
    message = decode(orjson.dumps(line)).data
    return {"type": message.TYPE, **message.model_dump()}


# A real (tiny) torch training on the remote host, wired like a stage process: the platform's
# StageContext reads control.jsonl at each step boundary and writes events.jsonl; the metrics go
# through posttrain's file writer (the remote host has no broker to reach).
TRAINING = """
import json, os, sys
from pathlib import Path
from posttrain.events.messages import RunStage
from posttrain.testing.training import run
from posttrain.trainer_agent.metrics_file import create_metrics_file_writer
from posttrain.trainer_agent.stage_files import ControlInbox, EventOutbox
from posttrain.trainer_agent.tasks.context import StageContext
run_dir = Path(os.environ["POSTTRAIN_RUN_DIR"])
stage = RunStage(command_id="p:train:1", agent_id="a", pipeline_id="p", stage="train",
                 attempt=1, job_id=sys.argv[1], task="python", params={})
writer = create_metrics_file_writer(stage.job_id, os.environ["POSTTRAIN_METRICS_DIR"])
ctx = StageContext(run=stage, attempt_dir=run_dir, work_dir=run_dir / "work", reporter=writer,
                   inbox=ControlInbox(run_dir, 0), outbox=EventOutbox(run_dir, stage))
outputs = run(ctx, steps=2000, step_s=0.01, lr=0.05)
writer.close()
(run_dir / "result.json").write_text(json.dumps({"status": "paused", "outputs": outputs,
                                                 "checkpoint": ctx.last_checkpoint}))
"""


async def test_a_real_training_runs_remotely_and_obeys_forwarded_controls(
    ssh_config: SshConfig, kafka_settings: Any, tmp_path: Path
) -> None:
    job = "job-ssh-train"
    reporter = _reporter(job, kafka_settings, tmp_path)
    events: list[dict[str, Any]] = []
    sup = SshRunner(
        ssh_config, tmp_path / "state", reporter, on_event=lambda e: events.append(_report(e))
    )
    await sup.start(
        RemoteLaunch(
            name="train-1",
            job_id=job,
            argv=[sys.executable, _script(tmp_path, "train.py", TRAINING), job],
            env={"OMP_NUM_THREADS": "1"},
        )
    )
    async with TopicReader(kafka_settings, Topic.METRICS) as reader:
        await reader.wait(lambda ms: len(points_by_key(ms, job)) >= 10, timeout=60)
        await sup.control({"type": "AdjustLearningRate", "action_id": "lr-1", "factor": 0.1})
        await wait_for(lambda: any(e.get("action_id") == "lr-1" for e in events), 30)
        await sup.control({"type": "PauseStage", "action_id": "pause-1", "reason": "test"})
        outcome = await asyncio.wait_for(sup.wait(), 30)
        applied = {e["action_id"]: e for e in events if e["type"] == "ActionApplied"}
        last = applied["pause-1"]["step"]
        final = await reader.wait(
            lambda ms: len(points_by_key(ms, job)) == last - 1 and points_by_key(ms, job),
            what="every step's point",
        )
    reporter.close()

    lr_step = applied["lr-1"]["step"]
    rates = {p.step: p.learning_rate for p in final.values()}
    assert sorted(rates) == list(range(1, last))  # no gap, no double
    assert all(rates[s] == pytest.approx(0.05) for s in range(1, lr_step))
    assert all(rates[s] == pytest.approx(0.005) for s in range(lr_step, last))
    assert outcome.exit_code == 0
    assert outcome.checkpoints and outcome.checkpoints[-1].endswith(f"step-{last}.pt")
    assert outcome.result is not None and outcome.result["checkpoint"] == outcome.checkpoints[-1]


async def test_a_wrong_host_key_is_refused_naming_the_host(
    sshd: TestSshd,
    ssh_config: SshConfig,
    wrong_known_hosts: Path,
    kafka_settings: Any,
    tmp_path: Path,
) -> None:
    wrong = wrong_known_hosts
    reporter = _reporter("job-ssh-key", kafka_settings, tmp_path)
    launch = RemoteLaunch(name="k-1", job_id="job-ssh-key", argv=["true"])

    mismatch = ssh_config.model_copy(update={"known_hosts_file": str(wrong)})
    with pytest.raises(HostKeyRefused, match=rf"127\.0\.0\.1:{sshd.port} does not match"):
        await SshRunner(mismatch, tmp_path / "s1", reporter).start(launch)
    # A changed key is refused even when unknown hosts may be accepted.
    lenient = mismatch.model_copy(update={"known_hosts": "accept_new"})
    with pytest.raises(HostKeyRefused, match=r"127\.0\.0\.1"):
        await SshRunner(lenient, tmp_path / "s2", reporter).start(launch)

    unknown = tmp_path / "empty_known_hosts"
    strict = ssh_config.model_copy(update={"known_hosts_file": str(unknown)})
    with pytest.raises(HostKeyRefused, match=r"127\.0\.0\.1.* is not in"):
        await SshRunner(strict, tmp_path / "s3", reporter).start(launch)
    # accept_new records an unknown host's key on first contact, then checks it as known.
    first_contact = strict.model_copy(update={"known_hosts": "accept_new"})
    sup = SshRunner(first_contact, tmp_path / "s4", reporter)
    await sup.start(launch)
    assert (await asyncio.wait_for(sup.wait(), 20)).exit_code == 0
    assert f"[127.0.0.1]:{sshd.port} ssh-ed25519 " in unknown.read_text()
    reporter.close()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.fixture
def unrelated_process() -> Any:
    """A process in a session of its own, standing for one that reused a run's pid."""
    proc = subprocess.Popen(["sleep", "120"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


async def test_a_reused_pid_is_never_adopted(
    ssh_config: SshConfig, unrelated_process: Any, kafka_settings: Any, tmp_path: Path
) -> None:
    pid = unrelated_process.pid
    start = start_time(pid)
    assert start is not None
    run_dir = Path(ssh_config.remote_dir) / "ghost"
    run_dir.mkdir(parents=True)
    record = {
        "run_dir": str(run_dir),
        "pid": pid,
        "start": start + 1,  # the run's wrapper started at another time: not this process
        "metrics_file": str(run_dir / "job_metrics.jsonl"),
        "result_file": None,
    }
    reporter = _reporter("job-ssh-ghost", kafka_settings, tmp_path)
    sup = SshRunner(ssh_config, tmp_path / "state", reporter)
    await sup.attach(record)
    await sup.cancel(grace_s=0.5)
    outcome = await asyncio.wait_for(sup.wait(), 20)
    reporter.close()
    assert outcome.exit_code is None  # the run is gone, and said so
    assert unrelated_process.poll() is None and _alive(pid)  # never signalled


async def test_an_unreachable_host_is_an_error_naming_it(
    ssh_config: SshConfig, kafka_settings: Any, tmp_path: Path
) -> None:
    closed = _closed_port()
    config = ssh_config.model_copy(update={"port": closed, "known_hosts": "accept_new"})
    reporter = _reporter("job-ssh-down", kafka_settings, tmp_path)
    sup = SshRunner(config, tmp_path / "state", reporter)
    with pytest.raises(SshError, match=rf"could not start the run on .*@127\.0\.0\.1:{closed}"):
        await sup.start(RemoteLaunch(name="down-1", job_id="job-ssh-down", argv=["true"]))
    reporter.close()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed
