"""``flush_metrics()`` from any process: every running ingest instance writes what it holds.

An instance is found through the consumer group it is a member of (so "running" means what the
broker says, with no registry to go stale): an instance with HTTP endpoints advertises their
address in its Kafka client id (``...@host:port``), and is asked ``POST /flush`` there.

A flush is done when every point that was in the metrics topic when it was asked for is in
PostgreSQL: the group's committed offsets reach the end offsets taken at the start. Until then
the instances are asked again (a point may still have been on its way to an instance's reader
the first time), up to the timeout.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson
from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from posttrain.events.kafka import KafkaSettings
from posttrain.events.topics import Topic

ADVERTISE_SEPARATOR = "@"
_ADMIN_TIMEOUT_S = 10.0


class FlushFailed(RuntimeError):
    """Not everything the metrics topic held could be written in time; the message says why
    (no instance running, one that cannot be reached, one that did not answer)."""


@dataclass
class FlushReport:
    """What a flush did: rows inserted by the instances asked, and who was asked."""

    rows_inserted: int = 0
    instances: list[str] = field(default_factory=list)
    rounds: int = 0


def advertised_client_id(client_id: str, http_address: str | None) -> str:
    """The Kafka client id of an instance whose HTTP endpoints listen on ``http_address``."""
    return f"{client_id}{ADVERTISE_SEPARATOR}{http_address}" if http_address else client_id


def endpoint_of(client_id: str, seen_from: str) -> str | None:
    """``host:port`` of an instance's endpoints from its client id (None if it has none); an
    instance listening on every interface is reached at the address the broker saw it from."""
    _, sep, address = client_id.rpartition(ADVERTISE_SEPARATOR)
    if not sep or ":" not in address:
        return None
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = seen_from.lstrip("/")
    return f"{host}:{port}"


async def flush_metrics(timeout_s: float = 60.0, *, settings: KafkaSettings | None = None) -> int:
    """Write every point the metrics topic holds now: each running ingest instance, in this
    process or any other, writes and commits what it holds. Returns the rows inserted; raises
    ``FlushFailed`` (saying why) when that cannot be done within ``timeout_s``.

    The group is the one of ``settings`` (by default the environment's namespace), plus the
    groups of the services running in this process."""
    from posttrain.metrics_ingest.service import GROUP_ID, running_here

    local = running_here()
    groups = {service.group: service.kafka for service in local.values()}
    if settings is not None or not groups:
        kafka = settings or KafkaSettings.from_env(client_id="posttrain-flush")
        groups.setdefault(kafka.group(GROUP_ID), kafka)
    deadline = time.monotonic() + timeout_s
    reports = [await _flush_group(kafka, group, deadline) for group, kafka in groups.items()]
    return sum(r.rows_inserted for r in reports)


async def _flush_group(settings: KafkaSettings, group: str, deadline: float) -> FlushReport:
    from posttrain.metrics_ingest.service import flush_here, running_here

    admin = AdminClient({**settings.librdkafka_config()})
    topic = settings.topic(Topic.METRICS)
    ends = await asyncio.to_thread(_end_offsets, admin, topic)
    report = FlushReport()
    unreachable: dict[str, str] = {}
    while True:
        report.rounds += 1
        local = running_here()
        members = await asyncio.to_thread(_members, admin, group)
        if not members and any(ends.values()):
            raise FlushFailed(
                f"no metrics ingest is running (consumer group {group!r} has no members): "
                "the points stay in Kafka until one starts (`posttrain-ingest`)"
            )
        for client_id, host in members:
            here = local.get(client_id)
            if here is not None:
                report.rows_inserted += await flush_here(
                    here, max(1.0, deadline - time.monotonic())
                )
                continue
            address = endpoint_of(client_id, host)
            if address is None:
                unreachable[client_id] = "it serves no HTTP endpoints (started with --http off)"
                continue
            try:
                rows = await asyncio.to_thread(_post_flush, address, deadline)
            except (OSError, ValueError) as exc:
                unreachable[client_id] = f"POST http://{address}/flush failed: {exc}"
                continue
            unreachable.pop(client_id, None)
            report.rows_inserted += rows
            if address not in report.instances:
                report.instances.append(address)
        behind = _behind(ends, await asyncio.to_thread(_committed, admin, group, topic, ends))
        if not behind:
            return report
        if time.monotonic() >= deadline:
            why = "; ".join(f"{c}: {r}" for c, r in unreachable.items()) or "no answer in time"
            raise FlushFailed(
                f"flush incomplete: partitions {sorted(behind)} of {topic} still hold points "
                f"not written to PostgreSQL ({why})"
            )
        await asyncio.sleep(0.1)


def _end_offsets(admin: AdminClient, topic: str) -> dict[int, int]:
    metadata = admin.list_topics(topic, timeout=_ADMIN_TIMEOUT_S).topics.get(topic)
    if metadata is None or metadata.error is not None:
        return {}
    # The last stable offset: what a read_committed reader (the ingest) can reach.
    latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
    request = {TopicPartition(topic, p): latest for p in metadata.partitions}
    futures = admin.list_offsets(
        request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=_ADMIN_TIMEOUT_S
    )
    return {tp.partition: f.result().offset for tp, f in futures.items()}


def _members(admin: AdminClient, group: str) -> list[tuple[str, str]]:
    try:
        description = admin.describe_consumer_groups([group])[group].result()
    except KafkaException:
        return []
    return [(m.client_id, m.host) for m in description.members]


def _committed(
    admin: AdminClient, group: str, topic: str, ends: Mapping[int, int]
) -> dict[int, int]:
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in ends])]
    try:
        result = admin.list_consumer_group_offsets(request)[group].result()
    except KafkaException:
        return {}
    return {tp.partition: tp.offset for tp in result.topic_partitions if tp.offset >= 0}


def _behind(ends: Mapping[int, int], committed: Mapping[int, int]) -> set[int]:
    return {p for p, end in ends.items() if end > 0 and committed.get(p, 0) < end}


def _post_flush(address: str, deadline: float) -> int:
    timeout = max(1.0, deadline - time.monotonic())
    request = urllib.request.Request(f"http://{address}/flush", data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise ValueError(f"HTTP {exc.code}") from exc
    return int(body["rows_inserted"])
