"""How fast a restarted orchestrator rebuilds its state from the event log, on the real broker.

The log is written as the orchestrator writes it: transactional producers with its settings
(idempotent, ``acks=all``, no linger), one transaction per decision, so commit markers sit
between the small batches of a decision's events (a stage's success and the next stage's
dispatch; a report of a started stage or a checkpoint). Each pipeline: submitted, then per
stage dispatched, started, ``--checkpoints`` checkpoints, succeeded; then the pipeline's
success; the pipelines of a partition interleaved, as many run at once. A transaction takes
tens of milliseconds here, so the log is short (``--pipelines 600``, about 64,000 events) and
written by eight producers per partition at once; the figures of a longer log differ.

Then ``replay_partitions`` (what an orchestrator runs when it is given partitions) reads and
folds all of it, in a fresh process each time, as after a restart, ``--runs`` times each way,
alternated, the median reported:

- alone (``--replay-processes 0``): ``in_process_events_per_s``;
- with its replay helpers as the orchestrator's process entry starts them, by default (one
  fewer than the CPUs, at most 3, forked before the event loop starts; shares for logs of
  10,000 events or more), timed from before they start: their start-up is part of what a
  restart pays. ``replay_events_per_s``.

Baseline in the same run: the same log read one record at a time (``getone``) and decoded into
models, as a plain consumer would. Also printed: two orchestrator instances of one consumer
group replaying half of the partitions each, at the same time. A replay that misses an event or
a pipeline fails the run.

    python -m bench.replay [--pipelines 600] [--checkpoints 10] [--baseline-events 50000]
                           [--runs 3]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Annotated, Any

import typer
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import drop_namespace, fresh_namespace, load
from bench.orchestrator_log import (
    Decision,
    Share,
    decisions,
    interleaved,
    pipeline_log,
    write_shares,
)
from posttrain.events import Envelope, decode, encode
from posttrain.events.kafka import KafkaSettings
from posttrain.events.kafka.producer import partition_for
from posttrain.events.topics import TOPICS, Topic
from posttrain.orchestrator.core.state import PipelineState, apply
from posttrain.orchestrator.shell.replay import (
    DEFAULT_PROCESSES,
    ReplayHelpers,
    replay_partitions,
)

# Transactional producers writing each partition at once (``bench.orchestrator_log``).
WRITERS = 8


async def write_log(
    settings: KafkaSettings, pipelines: int, checkpoints: int
) -> tuple[int, int, float]:
    """Write the log as the orchestrator does: transactional producers with its settings
    (idempotent, ``acks=all``, no linger), one transaction per decision, so a commit marker
    follows every decision; the pipelines of a partition interleaved, as many run at once.
    Returns (events, transactions, seconds)."""
    partitions = TOPICS[Topic.PIPELINE_EVENTS].partitions
    per_partition: dict[int, list[list[list[Envelope[Any]]]]] = {p: [] for p in range(partitions)}
    for i in range(pipelines):
        log = pipeline_log(i, checkpoints)
        per_partition[partition_for(log[0].key.encode(), partitions)].append(decisions(log))
    shares: list[Share] = [
        (p, w, _encoded(interleaved(logs[w::WRITERS])))
        for p, logs in per_partition.items()
        for w in range(WRITERS)
        if logs[w::WRITERS]
    ]
    return await write_shares(settings, "orchestrator", shares)


def _encoded(decisions_: Iterable[list[Envelope[Any]]]) -> Iterator[Decision]:
    # Encoded as they are written, in the writer's thread.
    for decision in decisions_:
        yield [encode(envelope) for envelope in decision]


async def naive_replay(settings: KafkaSettings, limit: int) -> tuple[int, float]:
    topic = settings.topic(Topic.PIPELINE_EVENTS)
    consumer = AIOKafkaConsumer(
        **settings.client_options(),
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        consumer.assign(
            [TopicPartition(topic, p) for p in range(TOPICS[Topic.PIPELINE_EVENTS].partitions)]
        )
        await consumer.seek_to_beginning()
        states: dict[str, PipelineState] = {}
        started = time.perf_counter()
        for _ in range(limit):
            record = await consumer.getone()
            envelope = decode(record.value, record.headers)
            pid = envelope.data.pipeline_id
            apply(states.setdefault(pid, PipelineState(pid)), envelope)
        return limit, time.perf_counter() - started
    finally:
        await consumer.stop()


async def replay_once(
    settings: KafkaSettings, partitions: list[int], helpers: ReplayHelpers | None, started: float
) -> dict[str, Any]:
    """What a restarted orchestrator instance does once it is given ``partitions``, timed from
    ``started``, before its replay helpers started (their start-up is part of what a restart
    pays)."""
    try:
        states, count = await replay_partitions(settings, partitions, helpers)
        finished = time.time()
        folded = helpers.shares_folded if helpers is not None else 0
    finally:
        if helpers is not None:
            helpers.close()
    return {
        "events": count,
        "pipelines": sum(len(s) for s in states.values()),
        "succeeded": sum(1 for s in states.values() for p in s.values() if p.status == "succeeded"),
        "helper_shares": folded,
        "helpers_started_by": helpers.start_method if helpers is not None else None,
        "started": started,
        "finished": finished,
    }


def replay_in_processes(
    settings: KafkaSettings, groups: list[list[int]], helpers: int = 0
) -> list[dict[str, Any]]:
    """Fresh processes, one per partition group, that start replaying together, each with
    ``helpers`` replay helper processes."""
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.replay",
                "--child",
                json.dumps([settings.namespace, g, helpers]),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for g in groups
    ]
    for child in children:  # each says "ready" once imported
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    results = []
    for child in children:
        out, _ = child.communicate(timeout=600)
        if child.returncode != 0:
            raise RuntimeError(f"replay child failed with code {child.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def child(namespace: str, partitions: list[int], processes: int) -> None:
    settings = replace(KafkaSettings.from_env(client_id="bench-replay"), namespace=namespace)
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.time()
    helpers = None
    if processes:
        # As the orchestrator's process entry starts them: before the event loop (forks).
        helpers = ReplayHelpers(processes)
        helpers.start()
    print(json.dumps(asyncio.run(replay_once(settings, partitions, helpers, started))), flush=True)


async def run(pipelines: int, checkpoints: int, baseline_events: int, runs: int) -> None:
    settings = await fresh_namespace("replay", [Topic.PIPELINE_EVENTS])
    try:
        total, transactions, seconds = await write_log(settings, pipelines, checkpoints)
        print(
            f"log: {total} events of {pipelines} pipelines in {transactions} transactions (one per"
            f" decision), written in {seconds:.1f} s ({load()})"
        )
        n, naive_s = await naive_replay(settings, min(baseline_events, total))
        naive_rate = n / naive_s
        print(f"naive_replay_events_per_s: {naive_rate:,.0f} (getone, {n} events; {load()})")
        partitions = list(range(TOPICS[Topic.PIPELINE_EVENTS].partitions))
        half = len(partitions) // 2
        (a, b) = replay_in_processes(settings, [partitions[:half], partitions[half:]])
        both = (a["events"] + b["events"]) / (
            max(a["finished"], b["finished"]) - min(a["started"], b["started"])
        )
        print(f"two_instances_events_per_s: {both:,.0f} (half of the partitions each; {load()})")
        # Alternated, so that both see the same moments of a machine whose speed drifts.
        rates: dict[str, list[float]] = {"alone": [], "with_helpers": []}
        for run_ in range(runs):
            for label, helpers in (("alone", 0), ("with_helpers", DEFAULT_PROCESSES)):
                (r,) = replay_in_processes(settings, [partitions], helpers)
                # A miss counts: a replay that lost events or pipelines fails the run.
                assert r["events"] == total and r["pipelines"] == pipelines == r["succeeded"], r
                rates[label].append(r["events"] / (r["finished"] - r["started"]))
                print(
                    f"run {run_ + 1} {label} ({helpers} helper processes"
                    f"{', ' + r['helpers_started_by'] if r['helpers_started_by'] else ''}, "
                    f"{r['helper_shares']} shares folded by them): {r['events']} events into "
                    f"{r['pipelines']} "
                    f"pipelines in {r['finished'] - r['started']:.2f} s "
                    f"({rates[label][-1]:,.0f}/s; {load()})"
                )
        medians = {label: statistics.median(values) for label, values in rates.items()}
        print(f"in_process_events_per_s: {medians['alone']:,.0f} (--replay-processes 0)")
        rate = medians["with_helpers"]
        print(f"ratio_vs_naive: {rate / naive_rate:.1f}")
        print(f"replay_events_per_s: {rate:.0f}")
    finally:
        await drop_namespace(settings)


def main(
    pipelines: Annotated[int, typer.Option(help="pipelines in the log")] = 600,
    checkpoints: Annotated[int, typer.Option(help="checkpoints per stage")] = 10,
    baseline_events: Annotated[int, typer.Option(help="events read by the naive loop")] = 50_000,
    runs: Annotated[int, typer.Option(help="replays of each kind; the median is reported")] = 3,
    child_args: Annotated[str | None, typer.Option("--child", hidden=True)] = None,
) -> None:
    """Orchestrator replay of a transactional log, alone and with its replay helpers."""
    if child_args is not None:
        namespace, partitions, helpers = json.loads(child_args)
        child(namespace, partitions, helpers)
        return
    asyncio.run(run(pipelines, checkpoints, baseline_events, runs))


if __name__ == "__main__":
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(main)
    app()
