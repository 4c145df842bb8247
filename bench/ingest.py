"""Metrics ingest, end to end: points emitted by the project's reporting path
(``create_training_callback``) go through Kafka and the ingest service into PostgreSQL.

Three phases, one run, each in a topic namespace of its own and one fresh database:

1. seed design (the baseline): a backlog of points, reported through the callback, is drained
   by a consumer that follows SEED.md section 2: a buffer of 100 points or 30 s, flushed with
   one INSERT per row, 100 per transaction, on one connection; offsets committed after.
2. ingest: a backlog of ``--points`` points, reported the same way, is drained by the service
   (``python -m posttrain.metrics_ingest``, default policy). ``ingest_points_per_s`` is the
   backlog over the time from the service joining its group to the last point being
   queryable (``get_latest_metrics`` sees every job's last step; the row count is checked).
3. live: the service runs while producer processes report at ``--live-rate`` points/s in
   total. A poller asks ``get_latest_metrics`` every 20 ms (every 100 ms in phases 1 and 2),
   so a point's visibility time is the first poll that sees it (or a later step of its job: a
   job's points land in order). Its latency is that time minus the point's timestamp, which
   the callback stamps when it is called: ``visible_p99_ms``. The latency is also split at
   the broker (a message's timestamp is stamped when the callback's sender sends it):
   ``live_emit_to_broker_p99_ms`` is the reporting path's share,
   ``live_broker_to_visible_p99_ms`` the ingest service's.

The callback delivers about 28,000 points/s per process (its background thread maps names and
encodes), so on a 2-core machine the backlogs are reported before the drain is timed: the
throughput figures are those of consuming and storing, the live phase measures latency at a
rate the machine can also report at.

    python -m bench.ingest [--points 1000000] [--seed-points 20000] [--jobs 6]
        [--producers 2] [--instances 1] [--live-rate 10000] [--live-seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

from bench.common import drop_namespace, fresh_namespace
from posttrain.events.kafka import EventConsumer, KafkaSettings
from posttrain.events.messages.metrics import MetricsReported
from posttrain.events.topics import Topic
from posttrain.metrics_ingest.core.batching import preset
from posttrain.metrics_ingest.core.wire import rows_from_message
from posttrain.metrics_ingest.queries import get_latest_metrics
from posttrain.metrics_ingest.store import MetricsWriter, prepare_connection

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATABASE_URL = "postgresql://posttrain:posttrain@127.0.0.1:5432/posttrain"
TOPICS = [Topic.METRICS, Topic.DLQ]
# The poller's period: fine for latency; coarser for throughput, where a 10 s drain needs no
# 20 ms precision and the polls' own cost (a query per job each time) would weigh on it.
LATENCY_POLL_S = 0.02
THROUGHPUT_POLL_S = 0.1


# --- producers: the project's reporting path ------------------------------------------------


def _report(
    settings: KafkaSettings,
    jobs: list[str],
    points: int,
    rate: float | None,
    spill_dir: str,
    out: Any,
) -> None:
    """Report ``points`` steps of each job through ``create_training_callback`` (one callback
    per job, as one training process per job would): as fast as the callbacks' senders deliver
    them (``rate`` None) or paced at ``rate`` points/s in all."""
    from posttrain.trainer_agent.reporting import create_training_callback

    reports = [
        create_training_callback(job, settings=settings, spill_dir=spill_dir) for job in jobs
    ]
    started = time.perf_counter()
    burst = max(1, int((rate or 0) * 0.01 / len(jobs)))
    for step in range(points):
        for report in reports:
            # What a GRPO step logs (TRL's names, mapped by the callback); two land in custom.
            report(
                step=step,
                epoch=step / 1000,
                loss=0.5 + (step % 13) * 0.01,
                reward=1.0 - (step % 7) * 0.05,
                reward_std=0.2,
                kl=0.01,
                entropy=1.5,
                grad_norm=1.0 + (step % 5) * 0.1,
                learning_rate=1e-5,
                frac_reward_zero_std=0.1,
                num_tokens=4096.0 * step,
            )
        if rate is not None:
            if step % burst == burst - 1:
                delay = started + (step + 1) * len(jobs) / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
        elif step % 1000 == 999:
            # Keep within the senders' pace: a full queue would spill to disk (still delivered,
            # but the benchmark would be measuring the spill file).
            while max(r.stats()["queued"] for r in reports) > 10_000:
                time.sleep(0.002)
    delivered = all(report.flush(600) for report in reports)
    elapsed = time.perf_counter() - started
    for report in reports:
        report.close()
    out.put((jobs, delivered, elapsed))


def report_in_processes(
    settings: KafkaSettings,
    jobs: Sequence[str],
    producers: int,
    points_per_job: int,
    rate: float | None,
) -> list[tuple[list[str], bool, float]]:
    with tempfile.TemporaryDirectory(prefix="bench-ingest-spill-") as spill:
        return _report_in_processes(settings, jobs, producers, points_per_job, rate, spill)


def _report_in_processes(
    settings: KafkaSettings,
    jobs: Sequence[str],
    producers: int,
    points_per_job: int,
    rate: float | None,
    spill: str,
) -> list[tuple[list[str], bool, float]]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    shares = [list(jobs[i::producers]) for i in range(producers)]
    procs = [
        ctx.Process(
            target=_report,
            args=(
                settings,
                share,
                points_per_job,
                rate * len(share) / len(jobs) if rate else None,
                spill,
                out,
            ),
        )
        for share in shares
        if share
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=900) for _ in procs]
    for p in procs:
        p.join()
    if not all(ok for _, ok, _ in results):
        raise RuntimeError(f"a reporter could not deliver its points: {results}")
    return results


# --- the seed design's consumer (the baseline) ------------------------------------------------


def _seed_design_consumer(settings: KafkaSettings, dsn: str, ready: Any, stop: Any) -> None:
    asyncio.run(_seed_design(settings, dsn, ready, stop))


async def _seed_design(settings: KafkaSettings, dsn: str, ready: Any, stop: Any) -> None:
    """SEED.md section 2's MetricsBuffer behind a Kafka consumer: add() each point, flush at
    100 points or 30 s with row INSERTs in one transaction, on one connection."""
    seed = preset("seed")
    conn = await asyncpg.connect(dsn)
    await prepare_connection(conn)  # rows carry times as the table stores them
    writer = MetricsWriter()  # only to register job and source numbers, as the schema wants
    columns = (
        "job_no, source_no, seq, step, epoch, ts, "
        + ", ".join(f for f in _core_fields())
        + ", custom"
    )
    placeholders = ", ".join(f"${i}" for i in range(1, columns.count(",") + 2))
    insert = f"INSERT INTO metrics ({columns}) VALUES ({placeholders})"
    consumer = EventConsumer(settings, [Topic.METRICS], group_id="seed-design", name="seed")
    await consumer.start()
    buffer: list[tuple[Any, ...]] = []
    opened = time.monotonic()

    async def flush() -> None:
        nonlocal buffer
        if buffer:
            async with conn.transaction():
                for row in buffer:
                    await conn.execute(insert, *row)
            buffer = []
        await consumer.commit()

    try:
        while not stop.is_set():
            received = await consumer.getmany(timeout_ms=100, max_records=10)
            if consumer.client.assignment() and not ready.is_set():
                ready.set()
            for r in received:
                message: MetricsReported = r.envelope.data
                report = rows_from_message(message)
                ids = (await writer.register(conn, [report]))[(report.job_id, report.source)]
                for row in report.rows:
                    if not buffer:
                        opened = time.monotonic()
                    buffer.append(ids + row)
                    if len(buffer) >= seed.max_rows:
                        await flush()
            if buffer and time.monotonic() - opened >= seed.max_age_s:
                await flush()
    finally:
        await consumer.stop()
        await conn.close()


def _core_fields() -> tuple[str, ...]:
    from posttrain.events.messages.metrics import CORE_FIELDS

    return CORE_FIELDS


# --- the service in its own process ---------------------------------------------------------


class IngestProcess:
    def __init__(self, settings: KafkaSettings, dsn: str) -> None:
        self.port = _free_port()
        self.log = Path(tempfile.mkstemp(prefix="bench-ingest-", suffix=".log")[1])
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "POSTTRAIN_TOPIC_NAMESPACE": settings.namespace,
            "DATABASE_URL": dsn,
            "POSTTRAIN_INGEST_HTTP": f"127.0.0.1:{self.port}",
        }
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "posttrain.metrics_ingest"],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read()

    async def wait_ready(self, timeout: float = 60.0) -> float:
        """The time the service has partitions assigned (it starts consuming right away)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ingest exited:\n{self.log.read_text()[-3000:]}")
            try:
                health = orjson.loads(await asyncio.to_thread(self._get, "/healthz"))
                if health["assigned_partitions"]:
                    return time.time()
            except OSError:
                pass
            await asyncio.sleep(LATENCY_POLL_S)
        raise RuntimeError(f"ingest not ready:\n{self.log.read_text()[-3000:]}")

    def prometheus(self) -> dict[str, float]:
        out = {}
        for line in self._get("/metrics").decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.unlink(missing_ok=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- watching points become queryable ---------------------------------------------------------


@dataclass
class Visibility:
    """Per job: (poll time, highest step visible) whenever it grew."""

    seen: dict[str, list[tuple[float, int]]]

    def all_visible_at(self, last_step: int) -> float:
        return max(next(t for t, s in polls if s >= last_step) for polls in self.seen.values())


async def watch(
    db: Any, jobs: Sequence[str], last_step: int, poll_s: float, timeout: float = 900.0
) -> Visibility:
    """Poll ``get_latest_metrics(job, 1)`` for every job until each shows ``last_step``."""
    seen: dict[str, list[tuple[float, int]]] = {job: [] for job in jobs}
    highest = dict.fromkeys(jobs, -1)
    deadline = time.monotonic() + timeout
    while min(highest.values()) < last_step:
        if time.monotonic() > deadline:
            raise RuntimeError(f"points not visible after {timeout}s: {highest}")
        for job in jobs:
            latest = await get_latest_metrics(job, 1, db=db)
            now = time.time()
            if latest and latest[0].point.step > highest[job]:
                highest[job] = latest[0].point.step
                seen[job].append((now, highest[job]))
        await asyncio.sleep(poll_s)
    return Visibility(seen)


async def latencies(
    db: Any, jobs: Sequence[str], visibility: Visibility
) -> dict[tuple[str, int], tuple[float, float]]:
    """Per point (job, step): its emission time and the first poll that saw it."""
    out: dict[tuple[str, int], tuple[float, float]] = {}
    for job in jobs:
        rows = await db.fetch(
            "SELECT m.step, date_part('epoch', m.ts) AS t FROM metrics m "
            "JOIN metric_jobs j USING (job_no) WHERE j.job_id = $1 ORDER BY m.step",
            job,
        )
        polls = visibility.seen[job]
        i = 0
        for row in rows:
            while polls[i][1] < row["step"]:
                i += 1
            out[(job, row["step"])] = (row["t"], polls[i][0])
    return out


async def broker_times(settings: KafkaSettings, expected: int) -> dict[tuple[str, int], float]:
    """When each point reached the broker (its message's timestamp, stamped on sending)."""
    out: dict[tuple[str, int], float] = {}
    async with EventConsumer(settings, [Topic.METRICS], group_id=None, name="bench") as consumer:
        while len(out) < expected:
            for r in await consumer.getmany(timeout_ms=1000):
                message: MetricsReported = r.envelope.data
                for p in message.points:
                    out[(message.job_id, p.step)] = r.timestamp_ms / 1000
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def count_rows(db: Any, jobs: Sequence[str]) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM metrics m JOIN metric_jobs j USING (job_no) "
            "WHERE j.job_id = ANY($1::text[])",
            list(jobs),
        )
    )


# --- the phases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    jobs: int
    producers: int
    instances: int

    def job_ids(self, prefix: str) -> list[str]:
        tag = uuid.uuid4().hex[:6]
        return [f"{prefix}-{tag}-{i}" for i in range(self.jobs)]


async def seed_design_phase(dsn: str, db: Any, points: int, shape: Shape) -> float:
    settings = await fresh_namespace("ingest-seed", TOPICS)
    try:
        jobs = shape.job_ids("seed")
        # Whole buffers of 100: a last, partial one would wait out the 30 s age and the figure
        # would measure that timer rather than the writes.
        per_job = points // len(jobs) // 100 * 100
        await asyncio.to_thread(report_in_processes, settings, jobs, shape.producers, per_job, None)
        ctx = mp.get_context("spawn")
        ready, stop = ctx.Event(), ctx.Event()
        proc = ctx.Process(target=_seed_design_consumer, args=(settings, dsn, ready, stop))
        proc.start()
        await asyncio.to_thread(ready.wait, 60)
        started = time.time()
        visibility = await watch(db, jobs, per_job - 1, THROUGHPUT_POLL_S)
        finished = visibility.all_visible_at(per_job - 1)
        stop.set()
        proc.join(60)
        stored = await count_rows(db, jobs)
        assert stored == per_job * len(jobs), (stored, per_job * len(jobs))
        print(f"seed_design_points: {stored}")
        print(f"seed_design_seconds: {finished - started:.2f}")
        return stored / (finished - started)
    finally:
        await drop_namespace(settings)


async def drain_phase(dsn: str, db: Any, points: int, shape: Shape) -> tuple[float, float]:
    settings = await fresh_namespace("ingest", TOPICS)
    try:
        jobs = shape.job_ids("drain")
        per_job = points // len(jobs)
        began = time.perf_counter()
        await asyncio.to_thread(report_in_processes, settings, jobs, shape.producers, per_job, None)
        reporting_rate = per_job * len(jobs) / (time.perf_counter() - began)
        ingest = [IngestProcess(settings, dsn) for _ in range(shape.instances)]
        try:
            started = min(await asyncio.gather(*(i.wait_ready() for i in ingest)))
            visibility = await watch(db, jobs, per_job - 1, THROUGHPUT_POLL_S)
            finished = visibility.all_visible_at(per_job - 1)
            batches = sum(i.prometheus()["posttrain_ingest_batches_total"] for i in ingest)
        finally:
            for i in ingest:
                i.stop()
        stored = await count_rows(db, jobs)
        assert stored == per_job * len(jobs), (stored, per_job * len(jobs))
        print(f"ingest_points: {stored}")
        print(f"ingest_instances: {shape.instances}")
        print(f"ingest_batches: {batches:.0f}")
        print(f"ingest_seconds: {finished - started:.2f}")
        return stored / (finished - started), reporting_rate
    finally:
        await drop_namespace(settings)


async def live_phase(
    dsn: str, db: Any, rate: float, seconds: float, shape: Shape
) -> tuple[list[float], float]:
    settings = await fresh_namespace("ingest-live", TOPICS)
    try:
        jobs = shape.job_ids("live")
        per_job = int(rate * seconds) // len(jobs)
        ingest = [IngestProcess(settings, dsn) for _ in range(shape.instances)]
        try:
            await asyncio.gather(*(i.wait_ready() for i in ingest))
            reporting = asyncio.create_task(
                asyncio.to_thread(
                    report_in_processes, settings, jobs, shape.producers, per_job, rate
                )
            )
            visibility = await watch(db, jobs, per_job - 1, LATENCY_POLL_S)
            results = await reporting
        finally:
            for i in ingest:
                i.stop()
        times = await latencies(db, jobs, visibility)
        sent = await broker_times(settings, len(times))
        delays = [seen - emitted for emitted, seen in times.values()]
        reporting = [sent[k] - emitted for k, (emitted, _) in times.items()]
        ingesting = [seen - sent[k] for k, (_, seen) in times.items()]
        first = min(emitted for emitted, _ in times.values())
        end_to_end = len(times) / (visibility.all_visible_at(per_job - 1) - first)
        print(f"live_points: {len(times)}")
        print(f"live_report_seconds: {max(e for _, _, e in results):.2f}")
        print(f"live_emit_to_broker_p99_ms: {percentile(reporting, 0.99) * 1000:.0f}")
        print(f"live_broker_to_visible_p99_ms: {percentile(ingesting, 0.99) * 1000:.0f}")
        return delays, end_to_end
    finally:
        await drop_namespace(settings)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--seed-points", type=int, default=20_000)
    parser.add_argument("--jobs", type=int, default=6, help="jobs (one callback each)")
    parser.add_argument("--producers", type=int, default=2, help="reporting processes")
    parser.add_argument("--instances", type=int, default=1, help="ingest service processes")
    parser.add_argument("--live-rate", type=float, default=10_000)
    parser.add_argument("--live-seconds", type=float, default=10)
    args = parser.parse_args()
    shape = Shape(args.jobs, args.producers, args.instances)

    from posttrain.service.migrate import apply_migrations

    base = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    name = f"bench_ingest_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(base)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    dsn = urlunsplit(urlsplit(base)._replace(path=f"/{name}"))
    try:
        await apply_migrations(dsn)
        db = await asyncpg.connect(dsn)
        try:
            seed_rate = await seed_design_phase(dsn, db, args.seed_points, shape)
            print(f"seed_design_points_per_s: {seed_rate:,.0f}")
            rate, reporting_rate = await drain_phase(dsn, db, args.points, shape)
            print(f"reporting_points_per_s: {reporting_rate:,.0f}")
            delays, live_rate = await live_phase(dsn, db, args.live_rate, args.live_seconds, shape)
            print(f"live_end_to_end_points_per_s: {live_rate:,.0f}")
            print(f"visible_p50_ms: {percentile(delays, 0.50) * 1000:.0f}")
            print(f"visible_p99_ms: {percentile(delays, 0.99) * 1000:.0f}")
            print(f"visible_max_ms: {max(delays) * 1000:.0f}")
            print(f"ingest_points_per_s: {rate:,.0f}")
            print(f"ratio_vs_seed_design: {rate / seed_rate:.1f}")
        finally:
            await db.close()
    finally:
        admin = await asyncpg.connect(base)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
