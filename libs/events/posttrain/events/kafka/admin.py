"""Create the declared topics and check that the broker's topics match their declaration."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.protocol.offset import OffsetRequest

from posttrain.events.kafka.settings import KafkaSettings
from posttrain.events.topics import TOPICS, TopicSpec

_TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno


@dataclass(frozen=True, slots=True)
class TopicProblem:
    topic: str
    problem: str


def _admin(settings: KafkaSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        **settings.client_options(),
        client_id=f"{settings.client_id}-admin",
        request_timeout_ms=15000,
    )


# How long a just-created topic may take to have a leader for every partition in the broker's
# metadata. Seconds on a cold single-node broker; a real cluster is faster.
LEADERS_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class NewTopicSpec:
    """A topic to create by its broker-side name (for topics outside the registry, such as a
    stream processor's changelogs)."""

    name: str
    partitions: int
    configs: dict[str, str]


async def ensure_topics(
    settings: KafkaSettings,
    specs: Iterable[TopicSpec] | None = None,
    *,
    wait_s: float | None = LEADERS_TIMEOUT_S,
) -> list[str]:
    """Create every missing topic with its partitions and configs; return the names created.

    Existing topics are left as they are (``check_topics`` reports a drift). Unless ``wait_s``
    is None, return only once every wanted topic has a leader for each partition in the broker's
    metadata: a client that starts after this sees them all (a consumer group that is assigned
    while a topic is missing from its metadata skips that topic's partitions until its next
    metadata refresh, minutes later)."""
    wanted = [
        NewTopicSpec(settings.topic(spec.topic), spec.partitions, spec.configs())
        for spec in (TOPICS.values() if specs is None else specs)
    ]
    return await ensure_named_topics(settings, wanted, wait_s=wait_s)


async def ensure_named_topics(
    settings: KafkaSettings,
    wanted: Iterable[NewTopicSpec],
    *,
    wait_s: float | None = LEADERS_TIMEOUT_S,
) -> list[str]:
    """``ensure_topics`` for topics given by their broker-side names."""
    wanted = list(wanted)
    admin = _admin(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                name=spec.name,
                num_partitions=spec.partitions,
                replication_factor=1 if _single_broker(admin) else 3,
                topic_configs=spec.configs,
            )
            for spec in wanted
            if spec.name not in existing
        ]
        created = []
        if new:
            response = await admin.create_topics(new)
            for name, code, *rest in response.topic_errors:
                if code == 0:
                    created.append(name)
                elif code != _TOPIC_ALREADY_EXISTS:
                    message = rest[0] if rest else ""
                    raise RuntimeError(f"creating topic {name} failed: error {code} {message}")
        if wait_s is not None:
            await _await_leaders(admin, [spec.name for spec in wanted], wait_s)
        return created
    finally:
        await admin.close()


async def await_leaders(
    settings: KafkaSettings, names: Iterable[str], timeout_s: float = LEADERS_TIMEOUT_S
) -> None:
    """Return once every named topic exists and each of its partitions has a leader in the
    broker's metadata; TimeoutError naming what is still missing otherwise."""
    admin = _admin(settings)
    await admin.start()
    try:
        await _await_leaders(admin, list(names), timeout_s)
    finally:
        await admin.close()


async def _await_leaders(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float) -> None:
    """Each topic's metadata names a leader for every partition, and each leader answers for
    it: the metadata can name a leader a moment before that broker serves the partition (a
    produce then fails with NotLeaderForPartition), so ask each leader for the end offsets."""
    deadline = time.monotonic() + timeout_s
    pending = sorted(set(names))
    delay = 0.05
    while pending:
        described = {t["topic"]: t for t in await admin.describe_topics(pending) if _led(t)}
        served = await _served(admin, described) if described else set()
        pending = [name for name in pending if name not in served]
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"topics without a serving leader for every partition after {timeout_s:.0f} s: "
                + ", ".join(pending)
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def _served(admin: AIOKafkaAdminClient, described: dict[str, dict[str, Any]]) -> set[str]:
    """The topics whose every partition's leader answers a ListOffsets request without error."""
    by_leader: dict[int, dict[str, list[int]]] = {}
    for topic, meta in described.items():
        for p in meta["partitions"]:
            by_leader.setdefault(p["leader"], {}).setdefault(topic, []).append(p["partition"])
    failed: set[str] = set()
    for leader, topics in by_leader.items():
        request = OffsetRequest(
            -1, 0, [(topic, [(p, -1) for p in partitions]) for topic, partitions in topics.items()]
        )
        try:
            response = await admin._client.send(leader, request)
        except KafkaError:
            failed.update(topics)
            continue
        for topic, partitions in response.topics:
            if any(error_code != 0 for _p, error_code, *_rest in partitions):
                failed.add(topic)
    return set(described) - failed


# The broker's internal topics behind consumer groups and transactions: created on first use.
_COORDINATOR_TOPICS = {0: "__consumer_offsets", 1: "__transaction_state"}


async def await_coordinators(settings: KafkaSettings, timeout_s: float = LEADERS_TIMEOUT_S) -> None:
    """Return once the broker can coordinate consumer groups and transactions.

    On a fresh broker both internal topics are created on the first request for a coordinator
    (COORDINATOR_NOT_AVAILABLE meanwhile); a group that joins or a producer that begins a
    transaction before they are up waits, retries and, in some clients, gives up. Asking here
    creates them, and waiting for every partition's leader means any group id or transactional
    id finds its coordinator at once afterwards."""
    admin = _admin(settings)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout_s
        for kind, topic in _COORDINATOR_TOPICS.items():
            while True:
                try:
                    await admin.find_coordinator(settings.group("posttrain-readiness"), kind)
                    break
                except KafkaError as exc:
                    if not exc.retriable or time.monotonic() >= deadline:
                        raise TimeoutError(
                            f"the broker found no {topic} coordinator: {exc!r}"
                        ) from exc
                    await asyncio.sleep(0.2)
            await _await_leaders(admin, [topic], max(deadline - time.monotonic(), 0.0))
    finally:
        await admin.close()


def _led(described: dict[str, Any]) -> bool:
    """A topic's metadata names a leader for each of its partitions (and the topic exists)."""
    partitions = described.get("partitions")
    if described.get("error_code") or not isinstance(partitions, list) or not partitions:
        return False
    return all(p.get("error_code") == 0 and p.get("leader", -1) >= 0 for p in partitions)


def _single_broker(admin: AIOKafkaAdminClient) -> bool:
    return len(admin._client.cluster.brokers()) <= 1


async def check_topics(
    settings: KafkaSettings, specs: Iterable[TopicSpec] | None = None
) -> list[TopicProblem]:
    """Every difference between the declared topics and the broker's."""
    wanted = list(TOPICS.values() if specs is None else specs)
    admin = _admin(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        problems = []
        present = []
        for spec in wanted:
            name = settings.topic(spec.topic)
            if name not in existing:
                problems.append(TopicProblem(name, "missing"))
            else:
                present.append(spec)
        if not present:
            return problems
        described = {
            t["topic"]: len(t["partitions"])
            for t in await admin.describe_topics([settings.topic(s.topic) for s in present])
        }
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, settings.topic(s.topic)) for s in present]
        )
        configs: dict[str, dict[str, str]] = {}
        for response in responses:
            for _code, _msg, _rtype, rname, entries in response.resources:
                configs[rname] = {entry[0]: entry[1] for entry in entries}
        for spec in present:
            name = settings.topic(spec.topic)
            if described.get(name) != spec.partitions:
                problems.append(
                    TopicProblem(
                        name, f"has {described.get(name)} partitions, declared {spec.partitions}"
                    )
                )
            for key, value in spec.configs().items():
                actual = configs.get(name, {}).get(key)
                if actual != value:
                    problems.append(TopicProblem(name, f"{key}={actual}, declared {value}"))
        return problems
    finally:
        await admin.close()
