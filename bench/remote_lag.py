"""Remote metrics lag: a point written on the SSH "remote" host -> seen on ``posttrain.metrics``.

The "remote" host is Debian's OpenSSH server started here on 127.0.0.1 (``posttrain.testing.sshd``,
run as root). One writer program runs there, started detached by ``SshRunner`` like a
``run_mode: ssh`` stage, and writes every point twice with posttrain's metrics file writer: to its
run folder, which the supervisor follows over SSH (SFTP reads at saved offsets), and, as the
baseline in the same run, to a local folder followed by the existing tailer (``tailer.follow``
with the poll the ``command`` task uses). Both go through a ``MetricsReporter`` with its shipped
options to a private namespace; this process reads the topic and takes, for each point, the time
it was read minus the time the writer stamped in it (one clock: the same machine).

    python -m bench.remote_lag [--points 300] [--rate 20]

Last line: ``remote_lag_p99_ms: X`` (goal: at most 1,000).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from aiokafka import AIOKafkaConsumer

from bench.common import drop_namespace, fresh_namespace
from posttrain.events import decode
from posttrain.events.messages import MetricsReported
from posttrain.events.tasks import SshConfig
from posttrain.events.topics import Topic
from posttrain.service.commands import command_app, run_app
from posttrain.testing.sshd import SshdMissing, TestSshd
from posttrain.trainer_agent.reporting import MetricsReporter
from posttrain.trainer_agent.supervisors.ssh_runner import RemoteLaunch, SshRunner
from posttrain.trainer_agent.tailer import MetricsFileTailer, follow

LOCAL_TAIL_POLL_S = 0.5  # tasks/command.py's poll of a command stage's metrics file

WRITER = """
import os, sys, time
from posttrain.trainer_agent.metrics_file import create_metrics_file_writer
remote_job, local_job, local_dir, points, rate = sys.argv[1:6]
remote = create_metrics_file_writer(remote_job, os.environ["POSTTRAIN_METRICS_DIR"])
local = create_metrics_file_writer(local_job, local_dir)
time.sleep(1.0)  # both followers running
period = 1.0 / float(rate)
start = time.monotonic()
for step in range(int(points)):
    remote(step=step, loss=1.0 / (step + 1))
    local(step=step, loss=1.0 / (step + 1))
    time.sleep(max(0.0, start + (step + 1) * period - time.monotonic()))
remote.close()
local.close()
"""


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(points: int, rate: float) -> float:
    folder = Path(tempfile.mkdtemp(prefix="bench-remote-lag-"))
    sshd = TestSshd(folder / "sshd")
    try:
        sshd.start()
    except SshdMissing as exc:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"remote_lag: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    settings = await fresh_namespace("remote-lag", [Topic.METRICS])
    consumer = AIOKafkaConsumer(
        settings.topic(Topic.METRICS),
        **settings.client_options(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    lags: dict[str, dict[int, float]] = {"remote": {}, "local": {}}
    try:
        await consumer.getmany(timeout_ms=500)  # assigned before any point is written
        os.environ["POSTTRAIN_SECRET_BENCH_KEY"] = sshd.client_key.read_text()
        config = SshConfig(
            host="127.0.0.1",
            port=sshd.port,
            user=sshd.user,
            key_secret="bench-key",
            remote_dir=str(folder / "remote"),
            known_hosts_file=str(sshd.known_hosts),
        )
        remote_reporter = MetricsReporter("bench-remote", settings=settings, spill_dir=folder)
        local_reporter = MetricsReporter("bench-local", settings=settings, spill_dir=folder)
        local_dir = folder / "local"
        local_dir.mkdir()
        stop = threading.Event()
        local_tail = threading.Thread(
            target=follow,
            args=(
                MetricsFileTailer(local_dir / "bench-local_metrics.jsonl"),
                local_reporter,
                stop,
            ),
            kwargs={"poll_s": LOCAL_TAIL_POLL_S},
            daemon=True,
        )
        local_tail.start()
        supervisor = SshRunner(config, folder / "state", remote_reporter)
        script = folder / "writer.py"
        script.write_text(WRITER)
        argv = [sys.executable, str(script), "bench-remote", "bench-local", str(local_dir)]
        await supervisor.start(
            RemoteLaunch("writer", "bench-remote", [*argv, str(points), str(rate)])
        )
        deadline = time.monotonic() + points / rate + 60
        jobs = {"bench-remote": "remote", "bench-local": "local"}
        while time.monotonic() < deadline and min(len(v) for v in lags.values()) < points:
            batches = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for records in batches.values():
                for record in records:
                    message = decode(record.value, record.headers).data
                    if isinstance(message, MetricsReported) and message.job_id in jobs:
                        seen = lags[jobs[message.job_id]]
                        for p in message.points:
                            seen.setdefault(p.step, (now - p.timestamp) * 1000)
        outcome = await asyncio.wait_for(supervisor.wait(), 30)
        stop.set()
        local_tail.join(30)
        remote_reporter.close()
        local_reporter.close()
    finally:
        await consumer.stop()
        sshd.stop()
        await drop_namespace(settings)
        shutil.rmtree(folder, ignore_errors=True)
    missing = {k: points - len(v) for k, v in lags.items() if len(v) < points}
    if missing or outcome.exit_code != 0:
        print(f"remote_lag: points missing {missing}, writer exit {outcome.exit_code}")
        return float("inf")
    for name in ("local", "remote"):
        values = list(lags[name].values())
        print(
            f"{name:>6}: p50 {statistics.median(values):7.1f} ms   p99 "
            f"{_quantile(values, 0.99):7.1f} ms   max {max(values):7.1f} ms   "
            f"({len(values)} points)"
        )
    remote_p99 = _quantile(list(lags["remote"].values()), 0.99)
    local_p99 = _quantile(list(lags["local"].values()), 0.99)
    print(f"remote/local p99 ratio: {remote_p99 / local_p99:.2f}")
    return remote_p99


app = command_app()


@app.command()
def _bench(
    points: Annotated[int, typer.Option(help="metric points the remote stage writes")] = 300,
    rate: Annotated[float, typer.Option(help="points per second")] = 20.0,
) -> None:
    """The lag from a remote stage's metric line to its point on the metrics topic."""
    p99 = asyncio.run(run(points, rate))
    print(f"remote_lag_p99_ms: {p99:.1f}")


if __name__ == "__main__":
    sys.exit(run_app(app, None, "python -m bench.remote_lag"))
