"""How fast the orchestrator rebuilds its state from the event log on the real broker.

Writes a log of realistic pipeline events (each pipeline: submitted, then per stage dispatched,
started, periodic checkpoints, succeeded; then pipeline succeeded) for P pipelines, then times
``replay_partitions`` (what an orchestrator runs when it is given partitions) reading and folding
all of it, in a fresh process each time, as a restarted orchestrator does: ``--runs`` times,
reporting the median. The headline is an orchestrator as it runs by default, with its replay
helper processes (one fewer than the CPUs, at most 3; started with the orchestrator, so before
the clock starts here) folding shares of the log beside it.

Baselines in the same run: the same log read one record at a time (``getone``) and decoded into
models, as a plain consumer would; and the orchestrator folding alone (``--replay-processes 0``).
Also printed: two orchestrator instances of one consumer group replaying half of the partitions
each, at the same time, as a scaled-out deployment restarts.

    python -m bench.replay [--pipelines 10000] [--checkpoints 10] [--baseline-events 50000]
                           [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import drop_namespace, fresh_namespace
from posttrain.events import Envelope, decode
from posttrain.events.kafka import EventProducer, KafkaSettings
from posttrain.events.messages import (
    CheckpointSaved,
    PipelineSubmitted,
    PipelineSucceeded,
    StageDispatched,
    StageSpec,
    StageStarted,
    StageSucceeded,
)
from posttrain.events.topics import TOPICS, Topic
from posttrain.orchestrator.core.state import PipelineState, apply
from posttrain.orchestrator.shell.replay import (
    DEFAULT_PROCESSES,
    ReplayHelpers,
    replay_partitions,
)

STAGES = ["preprocess", "sft", "grpo", "dpo", "ppo", "eval_grpo", "eval_dpo", "report"]
DEPS = {
    "sft": ["preprocess"],
    "grpo": ["sft"],
    "dpo": ["sft"],
    "ppo": ["sft"],
    "eval_grpo": ["grpo"],
    "eval_dpo": ["dpo"],
    "report": ["eval_grpo", "eval_dpo", "ppo"],
}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def pipeline_log(i: int, checkpoints: int) -> list[Envelope[Any]]:
    pid = f"pipe-{i:06d}"
    specs = [
        StageSpec(
            name=s,
            task="train_model",
            depends_on=DEPS.get(s, []),
            params={"config": {"algorithm": "sft", "model_path": "tiny"}},
        )
        for s in STAGES
    ]
    out: list[Envelope[Any]] = []
    n = 0

    def add(data: Any) -> None:
        nonlocal n
        n += 1
        out.append(
            Envelope(
                id=f"{pid}/{n}",
                occurred_at=T0 + timedelta(seconds=n),
                key=pid,
                data=data,
                correlation_id=pid,
            )
        )

    add(
        PipelineSubmitted(pipeline_id=pid, name="bench", stages=specs, layers=[[s] for s in STAGES])
    )
    for stage in STAGES:
        command = f"{pid}:{stage}:1"
        ids = dict(
            pipeline_id=pid,
            stage=stage,
            attempt=1,
            command_id=command,
            agent_id="gpu-1",
            job_id=f"{pid}.{stage}",
        )
        add(StageDispatched(**ids, task="train_model", params={"config": {"algorithm": "sft"}}))
        add(StageStarted(**ids, started_at=float(n)))
        for step in range(checkpoints):
            add(CheckpointSaved(**ids, step=step * 100, path=f"/ckpt/{command}/{step}"))
        add(StageSucceeded(**ids, finished_at=float(n), outputs={"checkpoint": f"/c/{command}"}))
    add(PipelineSucceeded(pipeline_id=pid))
    return out


async def write_log(settings: KafkaSettings, pipelines: int, checkpoints: int) -> int:
    total = 0
    async with EventProducer(settings) as producer:
        for start in range(0, pipelines, 100):
            batch = [
                e
                for i in range(start, min(start + 100, pipelines))
                for e in pipeline_log(i, checkpoints)
            ]
            total += await producer.send_many(Topic.PIPELINE_EVENTS, batch)
    return total


async def naive_replay(settings: KafkaSettings, limit: int) -> tuple[int, float]:
    topic = settings.topic(Topic.PIPELINE_EVENTS)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
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
    settings: KafkaSettings, partitions: list[int], helpers: ReplayHelpers | None
) -> dict[str, Any]:
    """What one orchestrator instance does when it is given ``partitions``; timed."""
    started = time.time()
    states, count = await replay_partitions(settings, partitions, helpers)
    finished = time.time()
    return {
        "events": count,
        "pipelines": sum(len(s) for s in states.values()),
        "succeeded": sum(1 for s in states.values() for p in s.values() if p.status == "succeeded"),
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
                settings.namespace,
                json.dumps(g),
                str(helpers),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for g in groups
    ]
    for child in children:  # each says "ready" once imported and connected
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


async def child(namespace: str, partitions: list[int], processes: int) -> None:
    settings = replace(KafkaSettings.from_env(client_id="bench-replay"), namespace=namespace)
    # As the orchestrator does: helpers start with it, before it is given partitions.
    helpers = ReplayHelpers(processes) if processes else None
    if helpers is not None:
        helpers.wait_started()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    try:
        print(json.dumps(await replay_once(settings, partitions, helpers)), flush=True)
    finally:
        if helpers is not None:
            helpers.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pipelines", type=int, default=10_000)
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--baseline-events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--child", nargs=3, metavar=("NAMESPACE", "PARTITIONS", "HELPERS"), help="internal"
    )
    args = parser.parse_args()
    if args.child:
        await child(args.child[0], json.loads(args.child[1]), int(args.child[2]))
        return
    settings = await fresh_namespace("replay", [Topic.PIPELINE_EVENTS])
    try:
        t = time.perf_counter()
        total = await write_log(settings, args.pipelines, args.checkpoints)
        print(
            f"events_written: {total} ({args.pipelines} pipelines) "
            f"in {time.perf_counter() - t:.1f} s"
        )
        n, naive_s = await naive_replay(settings, min(args.baseline_events, total))
        naive_rate = n / naive_s
        print(f"naive_replay_events_per_s: {naive_rate:,.0f} (getone, {n} events)")
        partitions = list(range(TOPICS[Topic.PIPELINE_EVENTS].partitions))
        half = len(partitions) // 2
        (a, b) = replay_in_processes(settings, [partitions[:half], partitions[half:]])
        both = (a["events"] + b["events"]) / (
            max(a["finished"], b["finished"]) - min(a["started"], b["started"])
        )
        print(f"two_instances_events_per_s: {both:,.0f} (half of the partitions each)")
        # Alternated, so that both see the same moments of a machine whose speed drifts.
        rates: dict[str, list[float]] = {"alone": [], "with_helpers": []}
        for run in range(args.runs):
            for label, helpers in (("alone", 0), ("with_helpers", DEFAULT_PROCESSES)):
                (r,) = replay_in_processes(settings, [partitions], helpers)
                assert r["events"] == total and r["pipelines"] == args.pipelines == r["succeeded"]
                rates[label].append(r["events"] / (r["finished"] - r["started"]))
                print(
                    f"run {run + 1} {label} ({helpers} helper processes): replayed {r['events']} "
                    f"events into {r['pipelines']} pipelines in "
                    f"{r['finished'] - r['started']:.2f} s ({rates[label][-1]:,.0f}/s)"
                )
        medians = {label: statistics.median(values) for label, values in rates.items()}
        print(f"in_process_events_per_s: {medians['alone']:,.0f} (--replay-processes 0)")
        rate = medians["with_helpers"]
        print(f"ratio_vs_naive: {rate / naive_rate:.1f}")
        print(f"replay_events_per_s: {rate:.0f}")
    finally:
        await drop_namespace(settings)


if __name__ == "__main__":
    asyncio.run(main())
