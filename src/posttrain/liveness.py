"""Whether the orchestrator's read model can be trusted now: is an orchestrator alive, and has
its projection read the event log to its end?

Two cheap questions, asked only when a status is shown: the orchestrator's consumer group has
members (a live instance holds its partitions; a dead one leaves the group after its session
timeout), and ``projection_offsets`` reaches the end offsets of ``pipeline.events``. One admin
round trip each; no consumer joins anything.
"""

from __future__ import annotations

import functools
from typing import Any

from posttrain.events.kafka import KafkaSettings
from posttrain.events.topics import TOPICS, Topic

ORCHESTRATOR_GROUP = "orchestrator"  # posttrain.orchestrator.shell.service.GROUP
PROJECTION = "pipelines"  # posttrain.orchestrator.shell.projection.Projection's default name
TIMEOUT_S = 3.0


@functools.cache
def _admin_for(settings: KafkaSettings) -> Any:
    """One admin client per process and connection, kept: librdkafka writes a line to stderr
    ("Purging 1 unserved events") when a short-lived client is closed."""
    from confluent_kafka.admin import AdminClient

    return AdminClient({**settings.librdkafka_config(), "socket.timeout.ms": 3000})


def _admin(settings: KafkaSettings) -> Any:
    return _admin_for(settings)


def orchestrator_members(settings: KafkaSettings) -> int:
    """How many orchestrator instances hold partitions now (raises ``OSError`` when the broker
    does not answer in time)."""
    from confluent_kafka import KafkaException

    group = settings.group(ORCHESTRATOR_GROUP)
    try:
        future = _admin(settings).describe_consumer_groups([group], request_timeout=TIMEOUT_S)
        return len(future[group].result(timeout=TIMEOUT_S + 1).members)
    except (KafkaException, TimeoutError) as exc:
        raise OSError(f"the broker at {settings.bootstrap_servers} did not answer: {exc}") from exc


def log_end_offsets(settings: KafkaSettings) -> dict[int, int]:
    """The end offset of each partition of ``pipeline.events``."""
    from confluent_kafka import KafkaException, TopicPartition
    from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

    topic = settings.topic(Topic.PIPELINE_EVENTS)
    partitions = TOPICS[Topic.PIPELINE_EVENTS].partitions
    latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
    try:
        futures = _admin(settings).list_offsets(
            {TopicPartition(topic, p): latest for p in range(partitions)},
            request_timeout=TIMEOUT_S,
        )
        return {tp.partition: f.result(timeout=TIMEOUT_S + 1).offset for tp, f in futures.items()}
    except (KafkaException, TimeoutError) as exc:
        raise OSError(f"the broker at {settings.bootstrap_servers} did not answer: {exc}") from exc


async def projected_offsets(db: Any, settings: KafkaSettings) -> dict[int, int]:
    """The read model's offsets in the log, asked of the orchestrator's client (its table)."""
    from posttrain.orchestrator.client import aget_projected_offsets

    return await aget_projected_offsets(settings, db=db, projection=PROJECTION)


def unprojected(ends: dict[int, int], projected: dict[int, int]) -> int:
    """Partitions of the log holding events the projection has not read.

    The orchestrator writes the log in transactions, so each partition's end offset lies one
    past a commit marker that the projection never records (it saves the offset after the last
    event it read): a gap of one is a projection that is up to date, a larger one is not."""
    return sum(1 for p, end in ends.items() if end - projected.get(p, 0) > 1)


def staleness(
    *, members: int, ends: dict[int, int], projected: dict[int, int], terminal: bool
) -> str | None:
    """Why the read model may not be current (None if it is): no live orchestrator (it matters
    only while the pipeline can still change), or a projection behind the log."""
    reasons = []
    if members == 0 and not terminal:
        reasons.append("no live orchestrator (start one with `posttrain orchestrator`)")
    behind = unprojected(ends, projected)
    if behind:
        reasons.append(f"the read model is behind the log in {behind} partition(s)")
    return "; ".join(reasons) or None


async def read_model_staleness(db: Any, settings: KafkaSettings, *, terminal: bool) -> str | None:
    """:func:`staleness` asked of the broker and the database; a broker that does not answer is
    a reason too."""
    import asyncio

    try:
        members = await asyncio.to_thread(orchestrator_members, settings)
        ends = await asyncio.to_thread(log_end_offsets, settings)
    except OSError:
        return (
            "cannot tell whether an orchestrator is alive: the broker at "
            f"{settings.bootstrap_servers} does not answer"
        )
    return staleness(
        members=members,
        ends=ends,
        projected=await projected_offsets(db, settings),
        terminal=terminal,
    )
