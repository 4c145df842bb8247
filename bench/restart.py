"""How soon a restarted orchestrator decides again, with and without snapshots, on the real broker.

A history of ``--pipelines`` ended pipelines (8 stages each: submitted, per stage dispatched,
started, succeeded, then the pipeline's success: 26 events) plus ``--running`` pipelines whose
first stage runs, written as the orchestrator writes its log (transactional producers with its
settings: idempotent, ``acks=all``, no linger). One transaction per decision would take an hour
here (tens of milliseconds each); the history's transactions carry ``--decisions-per-transaction``
decisions each, so it has fewer commit markers than a real log (which cost little to pass).

Then, for each history length (``--pipelines`` and a tenth of it), an orchestrator process
(``python -m posttrain.orchestrator``, its default replay helpers) is started three times, a new
pipeline submitted to each partition just before each start:

1. ``--no-snapshots``, no read model: it folds the whole log. Measured.
2. with snapshots and the read-model projection (the user's default, into a scratch database):
   it folds the whole log (no snapshot yet), then writes each partition's snapshot, archiving
   the ended pipelines, while the projection writes the history's rows; stopped once no ended
   pipeline is left in memory and every one is projected. Not measured (the time is printed).
3. with snapshots and the projection again: the orchestrator loads its snapshots and folds only
   what came after; the projection resumes from its saved offsets. Measured.

Measured: seconds from the process's start, and from the moment the group gave it its
partitions (its log line), to its first decision (the first new event committed on the log);
its RSS once it decided (with the projection in the process for 3). The last line is the
restart with snapshots at the full length: ``restart_to_first_decision_s`` (goal: at most 5).

    python -m bench.restart [--pipelines 100000] [--running 1000] [--decisions-per-transaction 100]
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Annotated, Any

import typer
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import drop_database, drop_namespace, fresh_database, fresh_namespace, load
from bench.orchestrator_log import (
    Decision,
    Share,
    decisions,
    interleaved,
    pipeline_log,
    write_shares,
)
from posttrain.events import Envelope, encode
from posttrain.events.kafka import EventProducer, KafkaSettings
from posttrain.events.kafka.producer import partition_for
from posttrain.events.messages import StageSpec, SubmitPipeline
from posttrain.events.topics import PIPELINE_PARTITIONS, Topic
from posttrain.orchestrator.shell.replay import DEFAULT_PROCESSES
from posttrain.service.migrate import apply_migrations
from posttrain.testing import services
from posttrain.testing.services import ServiceProcess

WRITERS = 4  # transactional producers per partition writing at once (bench.orchestrator_log)
# How long the run that writes the snapshots and projects the history may take: the read
# model's first catch-up of 2.6 M events is minutes on a loaded two-core machine.
SNAPSHOTS_TIMEOUT_S = 1800
_CHUNK = 500  # pipelines of a writer's share that run at once


def _share_decisions(pipelines: list[int], running_from: int) -> Iterator[Decision]:
    """A writer's pipelines' decisions, encoded, ``_CHUNK`` pipelines at a time (built as they
    are written: the whole history as models would not fit in memory), interleaved as
    pipelines that run at once; those from ``running_from`` on have their first stage running."""
    for c in range(0, len(pipelines), _CHUNK):
        logs = []
        for i in pipelines[c : c + _CHUNK]:
            log = pipeline_log(i, 0)
            if i >= running_from:
                log = log[:3]  # submitted, first stage dispatched and started: it runs
            logs.append([[encode(e) for e in decision] for decision in decisions(log)])
        yield from interleaved(logs)


async def write_history(
    settings: KafkaSettings, pipelines: int, running: int, per_transaction: int
) -> tuple[int, float]:
    """The ended and the running pipelines' events, ``per_transaction`` decisions a
    transaction; returns (events, seconds)."""
    per_partition: dict[int, list[int]] = {p: [] for p in range(PIPELINE_PARTITIONS)}
    for i in range(pipelines + running):
        per_partition[partition_for(f"pipe-{i:06d}".encode(), PIPELINE_PARTITIONS)].append(i)
    shares: list[Share] = [
        (p, w, _share_decisions(indices[w::WRITERS], pipelines))
        for p, indices in per_partition.items()
        for w in range(WRITERS)
        if indices[w::WRITERS]
    ]
    events, _, seconds = await write_shares(settings, "bench-restart", shares, per_transaction)
    return events, seconds


def _one_key_per_partition(tag: str) -> list[str]:
    keys: dict[int, str] = {}
    n = 0
    while len(keys) < PIPELINE_PARTITIONS:
        key = f"trigger-{tag}-{n}"
        keys.setdefault(partition_for(key.encode(), PIPELINE_PARTITIONS), key)
        n += 1
    return list(keys.values())


async def submit_triggers(settings: KafkaSettings, tag: str) -> None:
    """A new pipeline on every partition: what the restarted orchestrator decides first."""
    stage = StageSpec(name="only", task="command", params={"argv": ["true"]})
    async with EventProducer(settings) as producer:
        for key in _one_key_per_partition(tag):
            await producer.send(
                Topic.PIPELINE_COMMANDS,
                Envelope.create(
                    SubmitPipeline(pipeline_id=key, name="trigger", stages=[stage]), key=key
                ),
            )


async def _tail_start(settings: KafkaSettings) -> tuple[AIOKafkaConsumer, int]:
    topic = settings.topic(Topic.PIPELINE_EVENTS)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(PIPELINE_PARTITIONS)]
    consumer.assign(tps)
    ends = await consumer.end_offsets(tps)
    for tp, end in ends.items():
        consumer.seek(tp, end)
    return consumer, sum(ends.values())


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _given_at(log: Path, after: float) -> tuple[float | None, int]:
    """When the group first gave the process its partitions (a log line after ``after``, epoch
    seconds), and how many times it did (more than once: a rebalance during the restart)."""
    times = []
    for line in log.read_text().splitlines():
        if "orchestrator given partitions" not in line:
            continue
        try:
            at = datetime.fromisoformat(json.loads(line)["time"].replace("Z", "+00:00"))
        except (ValueError, KeyError):
            continue
        if at.timestamp() >= after - 0.01:
            times.append(at.timestamp())
    return (min(times) if times else None), len(times)


def _orchestrator(
    settings: KafkaSettings, log: Path, *extra: str, database_url: str | None = None
) -> ServiceProcess:
    return services.orchestrator(
        settings,
        log,
        database_url=database_url,  # None: no read model (--no-projection)
        tick_interval_s=1.0,
        extra=["--replay-processes", str(DEFAULT_PROCESSES), *extra],
    )


async def restart(
    settings: KafkaSettings, log: Path, tag: str, *extra: str, database_url: str | None = None
) -> dict[str, Any]:
    """Start an orchestrator on the history and time it to its first decision."""
    await submit_triggers(settings, tag)
    consumer, _ = await _tail_start(settings)
    try:
        started = time.time()
        process = _orchestrator(settings, log, *extra, database_url=database_url).start()
        assert process.process is not None
        try:
            while True:
                got = await consumer.getmany(timeout_ms=200)
                if any(got.values()):
                    decided = time.time()
                    break
                if not process.running:
                    raise RuntimeError(f"orchestrator died:\n{_tail(log)}")
                if time.time() - started > 600:
                    raise TimeoutError("no decision in 600 s")
            rss = _rss_mb(process.process.pid)
        finally:
            process.stop()
    finally:
        await consumer.stop()
    given, assignments = _given_at(log, started)
    return {
        "from_start_s": decided - started,
        "from_assigned_s": decided - given if given is not None else float("nan"),
        "assignments": assignments,
        "rss_mb": rss,
    }


async def make_snapshots(
    settings: KafkaSettings, log: Path, tag: str, expected: int, database_url: str
) -> tuple[float, float, float]:
    """Run an orchestrator with snapshots and the projection until every ended pipeline left
    memory (its metrics say so) and is projected; returns the seconds it took, and the seconds
    until the ended pipelines were archived and until they were projected."""
    await submit_triggers(settings, tag)
    port = services.free_port()
    started = time.time()
    process = services.orchestrator(
        settings,
        log,
        port=port,
        database_url=database_url,
        tick_interval_s=1.0,
        extra=["--replay-processes", str(DEFAULT_PROCESSES), "--snapshot-every-s", "1"],
    ).start()
    try:
        import asyncpg
        import httpx

        conn = await asyncpg.connect(database_url)
        archived_s = projected_s = float("nan")
        async with httpx.AsyncClient() as client:
            while True:
                if not process.running:
                    raise RuntimeError(f"orchestrator died:\n{_tail(log)}")
                if time.time() - started > SNAPSHOTS_TIMEOUT_S:
                    raise TimeoutError(
                        f"the ended pipelines were not archived and projected in "
                        f"{SNAPSHOTS_TIMEOUT_S} s"
                    )
                try:
                    text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                except httpx.HTTPError:
                    text = ""
                archived = _metric(text, "posttrain_orchestrator_pipelines_archived_total")
                projected = await conn.fetchval(
                    "SELECT count(*) FROM pipelines WHERE status <> 'running'"
                )
                if archived >= expected and archived_s != archived_s:  # still NaN
                    archived_s = time.time() - started
                if projected >= expected and projected_s != projected_s:
                    projected_s = time.time() - started
                if archived >= expected and projected >= expected:
                    await conn.close()
                    return time.time() - started, archived_s, projected_s
                await asyncio.sleep(1.0)
    finally:
        process.stop()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def one_length(pipelines: int, running: int, per_transaction: int) -> dict[str, Any]:
    settings = await fresh_namespace("restart")
    database_url = await fresh_database("restart")
    try:
        # The read model's tables, so that progress can be read before the projection starts.
        await apply_migrations(database_url, owner="orchestrator")
        events, seconds = await write_history(settings, pipelines, running, per_transaction)
        print(
            f"history: {pipelines:,} ended + {running:,} running pipelines, {events:,} events, "
            f"written in {seconds:.1f} s ({load()})",
            flush=True,
        )
        with TemporaryDirectory(prefix="bench-restart-") as tmp:
            log = Path(tmp) / "orchestrator.log"
            without = await restart(settings, log, "a", "--no-snapshots")
            _say(pipelines, "without snapshots, no read model", without)
            took, archived_s, projected_s = await make_snapshots(
                settings, log, "b", pipelines, database_url
            )
            print(
                f"  snapshots written and the history projected, {pipelines:,} pipelines "
                f"archived, in {took:.1f} s (archived after {archived_s:.1f} s; the read model's "
                f"first catch-up, {events:,} events from the process's start: {projected_s:.1f} s, "
                f"{events / projected_s:,.0f} events/s) ({load()})",
                flush=True,
            )
            with_ = await restart(settings, log, "c", database_url=database_url)
            _say(pipelines, "with snapshots and the read model", with_)
        return {"without": without, "with": with_}
    finally:
        await drop_namespace(settings)
        await drop_database(database_url)


def _say(pipelines: int, label: str, r: dict[str, Any]) -> None:
    print(
        f"  {pipelines:,} ended pipelines, {label}: first decision {r['from_start_s']:.2f} s "
        f"after the process started, {r['from_assigned_s']:.2f} s after its partitions were "
        f"assigned (given partitions {r['assignments']} time(s) until stopped); "
        f"RSS {r['rss_mb']:.0f} MB ({load()})",
        flush=True,
    )


async def run(pipelines: int, running: int, per_transaction: int) -> None:
    results = {}
    for n in (pipelines // 10, pipelines):
        results[n] = await one_length(n, running, per_transaction)
    for n, r in results.items():
        ratio = r["without"]["from_start_s"] / r["with"]["from_start_s"]
        print(f"restart_speedup_{n}: {ratio:.1f}x (without / with snapshots, from process start)")
    print(f"restart_to_first_decision_s: {results[pipelines]['with']['from_start_s']:.2f}")


def main(
    pipelines: Annotated[int, typer.Option(help="ended pipelines in the history")] = 100_000,
    running: Annotated[int, typer.Option(help="running pipelines in the history")] = 1_000,
    decisions_per_transaction: Annotated[
        int, typer.Option(help="decisions per transaction when writing the history")
    ] = 100,
) -> None:
    """Restart time to the first decision, with and without snapshots, at two history lengths."""
    asyncio.run(run(pipelines, running, decisions_per_transaction))


if __name__ == "__main__":
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(main)
    app()
