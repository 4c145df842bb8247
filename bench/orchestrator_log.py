"""The orchestrator's event log as the replay and restart benchmarks write it: fleet pipelines'
events, grouped into the orchestrator's decisions, written by transactional producers with the
orchestrator's settings, many at once.

The orchestrator has one transactional producer per partition, and a transaction takes tens of
milliseconds here: one producer per partition would need an hour for a benchmark's log. The log's
shape (a commit marker after each transaction) is the same whoever writes it, so several
producers write each partition at once, each in its own thread. librdkafka (as the metrics
reporter uses), because aiokafka spends about 2 ms of Python per transaction and the writing
would be CPU-bound.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

from posttrain.events import Envelope
from posttrain.events.codec import KafkaHeaders
from posttrain.events.kafka import KafkaSettings
from posttrain.events.messages import (
    CheckpointSaved,
    PipelineSubmitted,
    PipelineSucceeded,
    StageDispatched,
    StageSpec,
    StageStarted,
    StageSucceeded,
)
from posttrain.events.topics import Topic
from posttrain.testing.fleet import TEMPLATE

# The fleet's pipeline (preprocess -> SFT -> GRPO/DPO/PPO -> evaluations -> report), in order.
STAGES = list(TEMPLATE)
DEPS = TEMPLATE
T0 = datetime(2026, 1, 1, tzinfo=UTC)

Record = tuple[bytes, bytes, KafkaHeaders]  # key, value, headers, as ``encode`` gives them
Decision = Sequence[Record]  # the records of one decision, in order
T = TypeVar("T")


def pipeline_log(i: int, checkpoints: int) -> list[Envelope[Any]]:
    """Pipeline ``i``'s events: submitted, then per stage dispatched, started, ``checkpoints``
    checkpoints, succeeded; then the pipeline's success."""
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


def decisions(events: list[Envelope[Any]]) -> list[list[Envelope[Any]]]:
    """A pipeline's events grouped as the orchestrator decides them: a stage's dispatch goes out
    with the event that made it ready (the submission, or the previous stage's success), and the
    pipeline's success with its last stage's."""
    out: list[list[Envelope[Any]]] = []
    for envelope in events:
        if out and isinstance(envelope.data, StageDispatched | PipelineSucceeded):
            out[-1].append(envelope)
        else:
            out.append([envelope])
    return out


def interleaved(logs: Iterable[Sequence[T]]) -> Iterator[T]:
    """The items of several logs as pipelines that run at once make them: the first of every
    log, then the second of every log that has one, and so on."""
    for round_ in itertools.zip_longest(*logs):
        yield from (item for item in round_ if item is not None)


# (partition, the writer's number among that partition's, its decisions in log order)
Share = tuple[int, int, Iterable[Decision]]


def write_share(
    settings: KafkaSettings, name: str, share: Share, per_transaction: int
) -> tuple[int, int]:
    """One transactional producer, with the orchestrator's settings, writing ``share`` to its
    partition, ``per_transaction`` decisions a transaction; returns (events, transactions)."""
    from confluent_kafka import Producer

    partition, writer, decisions_ = share
    producer = Producer(
        {
            **settings.librdkafka_config(),
            "transactional.id": settings.group(f"{name}-p{partition}-{writer}"),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 0,  # as the orchestrator's: a decision's events leave at once
        }
    )
    producer.init_transactions(60)
    topic = settings.topic(Topic.PIPELINE_EVENTS)
    events = transactions = 0
    pending = iter(decisions_)
    while chunk := list(itertools.islice(pending, per_transaction)):
        producer.begin_transaction()
        for decision in chunk:
            for key, value, headers in decision:
                producer.produce(
                    topic, value=value, key=key, headers=cast(Any, headers), partition=partition
                )
            events += len(decision)
        producer.commit_transaction(60)
        transactions += 1
    return events, transactions


async def write_shares(
    settings: KafkaSettings, name: str, shares: list[Share], per_transaction: int = 1
) -> tuple[int, int, float]:
    """Every share written at once, each by its own producer in its own thread (transactional
    ids ``name``-p<partition>-<writer>); returns (events, transactions, seconds)."""
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, len(shares))) as pool:
        written = await asyncio.gather(
            *(
                loop.run_in_executor(pool, write_share, settings, name, share, per_transaction)
                for share in shares
            )
        )
    seconds = time.perf_counter() - started
    return sum(e for e, _ in written), sum(t for _, t in written), seconds
