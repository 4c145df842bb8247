"""Metrics, end to end, as a user's run pays for them: training processes report through
``create_training_callback`` while the ingest service (``python -m posttrain.metrics_ingest``,
its shipped defaults) stores the points, at the same time, on the real broker and database.

Everything runs in a fresh topic namespace and a fresh database, dropped at the end.

1. Rate search (the headline). Producer processes report the points of ``--jobs`` jobs at an
   offered rate for ``--trial-seconds``, paced evenly; a poller asks the database every 20 ms
   for each job's highest stored step, so a point is visible at the first poll that shows its
   step or a later one (a job's points keep one partition, and the ingest stores a partition in
   order). A point's visibility time is that poll minus its timestamp, stamped by the callback
   when the training loop called it. A rate passes when every point was delivered, became
   visible within 2 s, and was stored once with the values reported (every row is read back
   through the ingest's query API and compared). Rates double from ``--start-rate`` until one
   fails, then ``--refine`` bisections. The headline, ``ingest_points_per_s``, is the end-to-end
   rate achieved at the highest passing rate, the lower of two: the points over the span of
   their calls, and over the span of their becoming visible. The rate a user can sustain with
   every point visible within 2 s.
   Nothing passing gives 0.
2. 1,000 jobs at one step a second, each message one point (what a callback sends for a
   job that steps once a second), each job's messages a second apart and the jobs spread over
   the second. Their messages are written as the callback writes them (``MetricsReported``
   through the codec) and sent with its producer (``BlockingProducer``) from
   ``--fleet-producers`` processes: a thousand callbacks would be a thousand librdkafka
   clients, thousands of threads, on this machine (tried: it starved the broker). Reported:
   the ingest process's CPU per point and visibility (p50, p99, max); the callback's own CPU
   per point is the search's ``reporting_cpu_us_per_point``.
3. The seed design (the baseline for ``ratio_vs_seed_design``): SEED.md section 2's
   MetricsBuffer behind a Kafka consumer (a buffer of 100 points or 30 s, flushed with one
   INSERT per row in one transaction, offsets committed after), into a table of its own,
   draining a backlog reported through the callback. Draining a backlog is the most it can do,
   so the ratio flatters the baseline, not the service.

The machine's load average is printed beside each figure: it is shared.

    python -m bench.ingest [--jobs 8] [--producers 2] [--start-rate 4000] [--max-rate 128000]
        [--trial-seconds 6] [--refine 2] [--fleet-jobs 1000] [--fleet-seconds 20]
        [--fleet-producers 2] [--seed-points 20000]
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import psutil
import typer

from bench.common import drop_database, drop_namespace, fresh_database, fresh_namespace, load
from bench.common import percentile as pct
from posttrain.events.kafka import EventConsumer, KafkaSettings
from posttrain.events.messages.metrics import MetricsReported
from posttrain.events.topics import Topic
from posttrain.metrics_ingest.queries import get_job_points
from posttrain.testing import services

TOPICS = [Topic.METRICS, Topic.DLQ]
BUDGET_S = 2.0  # every point visible within this, or the rate fails
POLL_S = 0.02
SEED_BUFFER_ROWS = 100  # SEED.md section 2: MetricsBuffer(max_size=100, max_age_seconds=30)
SEED_BUFFER_AGE_S = 30.0


# --- what a training step reports, and what must come back ----------------------------------


def step_values(step: int) -> dict[str, float]:
    """One step's values: canonical names (they get columns) and one of the user's own (kept
    under ``custom``); each a function of the step, so a stored row can be checked."""
    return {
        "loss": 0.5 + (step % 13) * 0.01,
        "reward_mean": 1.0 - (step % 7) * 0.05,
        "kl_divergence": 0.001 * (step % 11),
        "grad_norm": 1.0 + (step % 5) * 0.1,
        "learning_rate": 1e-5,
        "bench_tokens": 4096.0 * step,
    }


def wrong_values(point: Any) -> bool:
    expected = step_values(point.step)
    custom = expected.pop("bench_tokens")
    return point.custom.get("bench_tokens") != custom or any(
        getattr(point, name) != value for name, value in expected.items()
    )


# --- producers: the project's reporting path, in processes of their own ----------------------


def _reporter_process(spill_dir: str, tasks: Any, barrier: Any, out: Any) -> None:
    """A training node: for each task, one callback per job (as a training process per job
    would have), started together with the other processes at the barrier."""
    from posttrain.trainer_agent.reporting import create_training_callback

    while (task := tasks.get()) is not None:
        settings, jobs, steps, step_rate = task
        reports = [
            create_training_callback(job, settings=settings, spill_dir=spill_dir) for job in jobs
        ]
        barrier.wait()
        cpu = time.process_time()
        _report(reports, steps, step_rate)
        delivered = all(report.flush(120) for report in reports)
        for report in reports:
            report.close()
        out.put((delivered, time.process_time() - cpu))


def _report(reports: list[Any], steps: int, step_rate: float | None) -> None:
    """Report ``steps`` steps of each job: at ``step_rate`` steps/s per job, the jobs' calls
    spread evenly over each period, or as fast as the senders take them (``step_rate`` None)."""
    started = time.perf_counter()
    per_call = 1.0 / (step_rate * len(reports)) if step_rate else 0.0
    n = 0
    for step in range(steps):
        values = step_values(step)
        for report in reports:
            report(step=step, epoch=step / 1000, **values)
            n += 1
            if per_call:
                delay = started + n * per_call - time.perf_counter()
                if delay > 0.001:
                    time.sleep(delay)
        if not per_call and step % 1000 == 999:
            # Keep within the senders' pace: a full queue would spill to disk.
            while max(r.stats()["queued"] for r in reports) > 10_000:
                time.sleep(0.002)


class Reporters:
    """Reporting processes, kept across runs: imports and start-up are paid once, and each run's
    callbacks are made and connected before the clock starts."""

    def __init__(self, processes: int, spill_dir: str) -> None:
        ctx = mp.get_context("spawn")
        self._barrier = ctx.Barrier(processes + 1)
        self._out = ctx.Queue()
        self._tasks = [ctx.Queue() for _ in range(processes)]
        self._procs = [
            ctx.Process(target=_reporter_process, args=(spill_dir, q, self._barrier, self._out))
            for q in self._tasks
        ]
        for p in self._procs:
            p.start()

    async def run(
        self, settings: KafkaSettings, jobs: Sequence[str], steps: int, step_rate: float | None
    ) -> tuple[bool, float]:
        """Report; (every point delivered, CPU seconds of the reporting processes)."""
        n = len(self._procs)
        for i, q in enumerate(self._tasks):
            q.put((settings, list(jobs[i::n]), steps, step_rate))
        await asyncio.to_thread(self._barrier.wait, 300)
        results = [await asyncio.to_thread(self._out.get, True, 600) for _ in self._procs]
        return all(ok for ok, _ in results), sum(cpu for _, cpu in results)

    def close(self) -> None:
        for q in self._tasks:
            q.put(None)
        for p in self._procs:
            p.join(30)
            if p.is_alive():
                p.kill()


# --- watching points become visible ----------------------------------------------------------

_HIGHEST = """
SELECT j.job_id, (SELECT max(m.step) FROM metrics m WHERE m.job_no = j.job_no) AS step
FROM metric_jobs j WHERE j.job_id = ANY($1::text[])
"""


async def watch(
    db: asyncpg.Pool, jobs: Sequence[str], last_step: int, timeout: float
) -> dict[str, list[tuple[float, int]]]:
    """Per job, (poll time, highest step stored) each time it grew, until every job shows
    ``last_step`` or ``timeout`` passes."""
    seen: dict[str, list[tuple[float, int]]] = {job: [] for job in jobs}
    highest = dict.fromkeys(jobs, -1)
    deadline = time.monotonic() + timeout
    while min(highest.values()) < last_step and time.monotonic() < deadline:
        try:
            rows = await db.fetch(_HIGHEST, list(jobs))
        except asyncpg.UndefinedTableError:  # the ingest migrates on its first batch
            rows = []
        now = time.time()
        for row in rows:
            step = row["step"]
            if step is not None and step > highest[row["job_id"]]:
                highest[row["job_id"]] = step
                seen[row["job_id"]].append((now, step))
        await asyncio.sleep(POLL_S)
    return seen


@dataclass
class Outcome:
    """What a shape's points did: their visibility times, and what was wrong."""

    expected: int
    delays: list[float]  # seconds from the call to visible, per point seen
    first_call: float
    last_call: float
    first_visible: float
    last_visible: float
    missing: int
    repeated: int
    wrong: int
    delivered: bool
    reporter_cpu_s: float

    @property
    def passed(self) -> bool:
        return (
            self.delivered
            and not (self.missing or self.repeated or self.wrong)
            and max(self.delays, default=float("inf")) <= BUDGET_S
        )

    @property
    def end_to_end(self) -> float:
        """Points stored correctly per second, over the longer of the two spans, the calls'
        (first to last) and the points' becoming visible (first to last): the lower of the
        rate the training loops sustained and the rate the ingest made their points visible."""
        good = self.expected - self.missing - self.wrong
        span = max(self.last_call - self.first_call, self.last_visible - self.first_visible)
        return good / span if span > 0 else 0.0

    def quantiles_ms(self) -> str:
        if not self.delays:
            return "none visible"
        return (
            f"p50 {pct(self.delays, 0.5) * 1000:.0f} ms, p99 {pct(self.delays, 0.99) * 1000:.0f} "
            f"ms, max {max(self.delays) * 1000:.0f} ms"
        )


async def check(
    db: asyncpg.Pool,
    seen: dict[str, list[tuple[float, int]]],
    steps: int,
    delivered: bool,
    reporter_cpu_s: float,
) -> Outcome:
    """Read every job's rows back through the ingest's query API: each step once, with the
    values reported; each point's visibility from the polls."""
    delays: list[float] = []
    missing = repeated = wrong = 0
    first_call, last_call = float("inf"), 0.0
    first_visible, last_visible = float("inf"), 0.0
    for job, polls in seen.items():
        points = await get_job_points(job, db=db)
        by_step: dict[int, Any] = {}
        for stored in points:
            if stored.point.step in by_step:
                repeated += 1
            by_step[stored.point.step] = stored.point
        missing += sum(1 for s in range(steps) if s not in by_step)
        i = 0
        for step in sorted(by_step):
            point = by_step[step]
            wrong += wrong_values(point)
            first_call = min(first_call, point.timestamp)
            last_call = max(last_call, point.timestamp)
            while i < len(polls) and polls[i][1] < step:
                i += 1
            if i < len(polls):
                delays.append(polls[i][0] - point.timestamp)
                first_visible = min(first_visible, polls[i][0])
                last_visible = max(last_visible, polls[i][0])
    return Outcome(
        steps * len(seen),
        delays,
        first_call,
        last_call,
        first_visible,
        last_visible,
        missing,
        repeated,
        wrong,
        delivered,
        reporter_cpu_s,
    )


async def run_shape(
    settings: KafkaSettings,
    db: asyncpg.Pool,
    reporters: Reporters,
    jobs: Sequence[str],
    steps: int,
    step_rate: float,
) -> Outcome:
    """Report ``steps`` steps of each job at ``step_rate`` while the ingest runs; the outcome."""
    period = steps / step_rate
    reporting = asyncio.create_task(reporters.run(settings, jobs, steps, step_rate))
    watching = asyncio.create_task(watch(db, jobs, steps - 1, period + 60 + BUDGET_S))
    delivered, cpu = await reporting
    seen = await watching
    return await check(db, seen, steps, delivered, cpu)


# --- the rate search --------------------------------------------------------------------------


def job_ids(prefix: str, count: int) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    return [f"{prefix}-{tag}-{i}" for i in range(count)]


async def trial(
    settings: KafkaSettings, db: asyncpg.Pool, reporters: Reporters, rate: float, opts: Options
) -> Outcome:
    jobs = job_ids(f"r{rate:.0f}", opts.jobs)
    step_rate = rate / len(jobs)
    steps = max(1, int(step_rate * opts.trial_seconds))
    outcome = await run_shape(settings, db, reporters, jobs, steps, step_rate)
    verdict = "pass" if outcome.passed else "FAIL"
    print(
        f"rate {rate:,.0f}/s: {verdict}; {outcome.end_to_end:,.0f} points/s end to end; "
        f"visible {outcome.quantiles_ms()}; {outcome.missing} missing, {outcome.repeated} "
        f"repeated, {outcome.wrong} wrong{'' if outcome.delivered else ', not all delivered'}"
        f" ({load()})",
        flush=True,
    )
    return outcome


async def search(
    settings: KafkaSettings, db: asyncpg.Pool, reporters: Reporters, opts: Options
) -> tuple[float, Outcome | None]:
    """The highest passing rate and its outcome (0 and None when none passes)."""
    best: tuple[float, Outcome | None] = (0.0, None)
    failed: float | None = None
    rate = opts.start_rate
    while rate <= opts.max_rate:
        outcome = await trial(settings, db, reporters, rate, opts)
        if outcome.passed:
            best = (rate, outcome)
            rate *= 2
        else:
            failed = rate
            break
    if best[1] is None and failed is not None:  # even the start failed: look lower
        rate = failed / 2
        while rate >= opts.start_rate / 8 and best[1] is None:
            outcome = await trial(settings, db, reporters, rate, opts)
            if outcome.passed:
                best = (rate, outcome)
            else:
                failed, rate = rate, rate / 2
    for _ in range(opts.refine if failed is not None and best[1] is not None else 0):
        assert failed is not None
        rate = (best[0] + failed) / 2
        outcome = await trial(settings, db, reporters, rate, opts)
        if outcome.passed:
            best = (rate, outcome)
        else:
            failed = rate
    return best


# --- 1,000 jobs at a step a second ------------------------------------------------------------


def _fleet_report(
    settings: KafkaSettings, jobs: list[str], steps: int, ready: Any, go: Any, out: Any
) -> None:
    """Each job's one-point messages, a second apart, the jobs spread over the second; every
    10 ms the messages due go out in one call of the reporters' producer (``BlockingProducer``,
    as the callback's sender uses). Puts (delivered, CPU seconds) on ``out``."""
    from posttrain.events import Envelope, encode
    from posttrain.events.kafka.blocking import BlockingProducer
    from posttrain.events.messages.metrics import MetricPoint

    producer = BlockingProducer(settings)
    ready.put(len(jobs))
    go.wait()
    cpu = time.process_time()
    started = time.perf_counter()
    due = sorted(
        (step + i / len(jobs), job, step) for step in range(steps) for i, job in enumerate(jobs)
    )
    delivered = True
    i = 0
    while i < len(due):
        now = time.perf_counter() - started
        records = []
        while i < len(due) and due[i][0] <= now:
            _, job, step = due[i]
            values = step_values(step)
            custom = {"bench_tokens": values.pop("bench_tokens")}
            point = MetricPoint(
                step=step, epoch=step / 1000, timestamp=time.time(), custom=custom, **values
            )
            message = MetricsReported(
                job_id=job, source=f"{job}-fleet", first_seq=step, points=[point]
            )
            records.append(encode(Envelope.create(message, key=job)))
            i += 1
        if records:
            try:
                producer.send(Topic.METRICS, records)
            except Exception:  # counted: the missing points fail the shape
                delivered = False
        time.sleep(0.01)
    producer.close()
    out.put((delivered, time.process_time() - cpu))


async def fleet(
    settings: KafkaSettings,
    db: asyncpg.Pool,
    ingest: services.ServiceProcess,
    opts: Options,
) -> None:
    """1,000 jobs at a step a second, one point per message: the ingest's CPU per point."""
    jobs = job_ids("fleet", opts.fleet_jobs)
    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    shares = [jobs[i :: opts.fleet_producers] for i in range(opts.fleet_producers)]
    procs = [
        ctx.Process(target=_fleet_report, args=(settings, s, opts.fleet_seconds, ready, go, out))
        for s in shares
    ]
    for p in procs:
        p.start()
    for _ in procs:
        await asyncio.to_thread(ready.get, True, 120)
    assert ingest.process is not None
    proc = psutil.Process(ingest.process.pid)
    before = proc.cpu_times()
    go.set()
    seen = await watch(db, jobs, opts.fleet_seconds - 1, opts.fleet_seconds + 30 + BUDGET_S)
    results = [await asyncio.to_thread(out.get, True, 120) for _ in procs]
    after = proc.cpu_times()
    for p in procs:
        p.join(30)
    outcome = await check(
        db, seen, opts.fleet_seconds, all(ok for ok, _ in results), sum(c for _, c in results)
    )
    ingest_cpu = (after.user + after.system) - (before.user + before.system)
    stored = outcome.expected - outcome.missing
    print(
        f"fleet: {len(jobs)} jobs x {opts.fleet_seconds} steps at 1 step/s, one-point messages; "
        f"{outcome.missing} missing, {outcome.repeated} repeated, {outcome.wrong} wrong"
        f"{'' if outcome.delivered else ', not all delivered'}"
    )
    print(f"fleet_visible: {outcome.quantiles_ms()} ({load()})")
    print(f"fleet_visible_p99_ms: {pct(outcome.delays, 0.99) * 1000:.0f}")
    print(f"fleet_ingest_cpu_us_per_point: {ingest_cpu / max(stored, 1) * 1e6:.0f}")


# --- the seed design --------------------------------------------------------------------------

_SEED_TABLE = """
CREATE TABLE seed_metrics (
    job_uuid text NOT NULL, step bigint NOT NULL, epoch double precision,
    timestamp timestamptz NOT NULL, loss double precision, reward_mean double precision,
    kl_divergence double precision, grad_norm double precision, learning_rate double precision,
    custom jsonb
)
"""
_SEED_INSERT = (
    "INSERT INTO seed_metrics VALUES ($1, $2, $3, to_timestamp($4), $5, $6, $7, $8, $9, $10)"
)


async def seed_design_consumer(settings: KafkaSettings, dsn: str, assigned: asyncio.Event) -> None:
    """SEED.md section 2's MetricsBuffer behind a Kafka consumer: add() each point; flush at 100
    points or 30 s, one INSERT per row in one transaction; commit the offsets after."""
    import orjson

    conn = await asyncpg.connect(dsn)
    buffer: list[tuple[Any, ...]] = []
    opened = time.monotonic()
    async with EventConsumer(settings, [Topic.METRICS], group_id="seed", name="seed") as consumer:

        async def flush() -> None:
            nonlocal buffer
            async with conn.transaction():
                for row in buffer:
                    await conn.execute(_SEED_INSERT, *row)
            buffer = []
            await consumer.commit()

        try:
            while True:
                received = await consumer.getmany(timeout_ms=100)
                if consumer.client.assignment():
                    assigned.set()
                for r in received:
                    message: MetricsReported = r.envelope.data
                    for p in message.points:
                        if not buffer:
                            opened = time.monotonic()
                        buffer.append(
                            (
                                message.job_id,
                                p.step,
                                p.epoch,
                                p.timestamp,
                                p.loss,
                                p.reward_mean,
                                p.kl_divergence,
                                p.grad_norm,
                                p.learning_rate,
                                orjson.dumps(p.custom).decode(),
                            )
                        )
                        if len(buffer) >= SEED_BUFFER_ROWS:
                            await flush()
                if buffer and time.monotonic() - opened >= SEED_BUFFER_AGE_S:
                    await flush()
        finally:
            await conn.close()


async def seed_design(dsn: str, db: asyncpg.Pool, reporters: Reporters, opts: Options) -> float:
    """The seed design's drain rate of a backlog reported through the callback."""
    settings = await fresh_namespace("ingest-seed", TOPICS)
    try:
        await db.execute(_SEED_TABLE)
        jobs = job_ids("seed", opts.jobs)
        # Whole buffers of 100: a last, partial one would wait out the 30 s age.
        steps = opts.seed_points // len(jobs) // 100 * 100
        delivered, _ = await reporters.run(settings, jobs, steps, None)
        assigned = asyncio.Event()
        consumer = asyncio.create_task(seed_design_consumer(settings, dsn, assigned))
        try:
            await asyncio.wait_for(assigned.wait(), 60)
            started = time.time()
            expected = steps * len(jobs)
            deadline = time.monotonic() + 300
            stored = 0
            while stored < expected and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                stored = await db.fetchval("SELECT count(*) FROM seed_metrics")
            finished = time.time()
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
        rows = await db.fetch("SELECT step, loss, custom FROM seed_metrics")
        wrong = sum(1 for r in rows if r["loss"] != step_values(r["step"])["loss"])
        rate = (stored - wrong) / (finished - started)
        print(
            f"seed_design: {stored} of {expected} points stored ({wrong} wrong"
            f"{'' if delivered else ', not all delivered'}) in {finished - started:.2f} s"
        )
        print(f"seed_design_points_per_s: {rate:,.0f} ({load()})")
        return rate
    finally:
        await drop_namespace(settings)


# --- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    jobs: int
    producers: int
    start_rate: float
    max_rate: float
    trial_seconds: float
    refine: int
    fleet_jobs: int
    fleet_seconds: int
    fleet_producers: int
    seed_points: int


async def run(opts: Options) -> None:
    dsn = await fresh_database("ingest")
    try:
        db = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        try:
            with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
                await _run(dsn, db, opts, tmp)
        finally:
            await db.close()
    finally:
        await drop_database(dsn)


async def _run(dsn: str, db: asyncpg.Pool, opts: Options, tmp: str) -> None:
    settings = await fresh_namespace("ingest", TOPICS)
    ingest = services.ingest(settings, dsn, Path(tmp) / "ingest.log").start()
    reporters = Reporters(opts.producers, tmp)
    try:
        await ingest.wait_ready()  # its migrations are applied by then
        rate, outcome = await search(settings, db, reporters, opts)
        await fleet(settings, db, ingest, opts)
        ingest.stop()
        await drop_namespace(settings)
        seed_rate = await seed_design(dsn, db, reporters, opts)
    finally:
        reporters.close()
        ingest.stop()
        await drop_namespace(settings)
    headline = outcome.end_to_end if outcome is not None else 0.0
    if outcome is not None:
        print(f"headline_offered_rate: {rate:,.0f} points/s ({opts.jobs} jobs)")
        print(f"visible_p50_ms: {pct(outcome.delays, 0.5) * 1000:.0f}")
        print(f"visible_p99_ms: {pct(outcome.delays, 0.99) * 1000:.0f}")
        print(f"visible_max_ms: {max(outcome.delays) * 1000:.0f}")
        stored = outcome.expected - outcome.missing
        print(
            f"reporting_cpu_us_per_point: {outcome.reporter_cpu_s / max(stored, 1) * 1e6:.0f}"
            " (the callbacks' processes, at the headline rate)"
        )
    else:
        print(f"no rate down to {opts.start_rate / 8:,.0f}/s had every point visible in 2 s")
    print(f"ratio_vs_seed_design: {headline / seed_rate:.1f}")
    print(f"ingest_points_per_s: {headline:.0f}")


def main(
    jobs: Annotated[int, typer.Option(help="jobs of the rate search, a callback each")] = 8,
    producers: Annotated[int, typer.Option(help="reporting processes of the search")] = 2,
    start_rate: Annotated[float, typer.Option(help="first offered rate, points/s")] = 4000,
    max_rate: Annotated[float, typer.Option(help="highest offered rate tried")] = 128_000,
    trial_seconds: Annotated[float, typer.Option(help="seconds each rate is offered")] = 6,
    refine: Annotated[int, typer.Option(help="bisections after the first failing rate")] = 2,
    fleet_jobs: Annotated[int, typer.Option(help="jobs of the one-step-a-second shape")] = 1000,
    fleet_seconds: Annotated[int, typer.Option(help="steps of each of those jobs")] = 20,
    fleet_producers: Annotated[int, typer.Option(help="processes sending their messages")] = 2,
    seed_points: Annotated[int, typer.Option(help="backlog drained by the seed design")] = 20_000,
) -> None:
    """Metrics ingest end to end: rate search, 1,000 slow jobs, the seed design's baseline."""
    opts = Options(
        jobs,
        producers,
        start_rate,
        max_rate,
        trial_seconds,
        refine,
        fleet_jobs,
        fleet_seconds,
        fleet_producers,
        seed_points,
    )
    asyncio.run(run(opts))


if __name__ == "__main__":
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(main)
    app()
