"""How fast the orchestrator rebuilds its state from the event log on the real broker.

Writes a log of realistic pipeline events (each pipeline: submitted, then per stage dispatched,
started, periodic checkpoints, succeeded; then pipeline succeeded) for P pipelines, then times
``replay_partitions`` (what an orchestrator runs when it is given partitions) reading and folding
all of it. Baseline in the same run: the same log read one record at a time (``getone``).

    python -m bench.replay [--pipelines 10000] [--checkpoints 10] [--baseline-events 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
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
from posttrain.orchestrator.shell.replay import replay_partitions

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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pipelines", type=int, default=10_000)
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--baseline-events", type=int, default=50_000)
    args = parser.parse_args()
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
        partitions = range(TOPICS[Topic.PIPELINE_EVENTS].partitions)
        started = time.perf_counter()
        states, count = await replay_partitions(settings, partitions)
        elapsed = time.perf_counter() - started
        pipelines = sum(len(s) for s in states.values())
        done = sum(1 for s in states.values() for p in s.values() if p.status == "succeeded")
        assert count == total and pipelines == args.pipelines == done, (count, pipelines, done)
        print(f"replayed_events: {count} into {pipelines} pipelines in {elapsed:.2f} s")
        print(f"ratio_vs_naive: {count / elapsed / naive_rate:.1f}")
        print(f"replay_events_per_s: {count / elapsed:.0f}")
    finally:
        await drop_namespace(settings)


if __name__ == "__main__":
    asyncio.run(main())
