"""Create the declared topics and check that the broker's topics match their declaration."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from posttrain.events.kafka.settings import KafkaSettings
from posttrain.events.topics import TOPICS, TopicSpec

_TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno


@dataclass(frozen=True, slots=True)
class TopicProblem:
    topic: str
    problem: str


def _admin(settings: KafkaSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-admin",
        request_timeout_ms=15000,
    )


async def ensure_topics(
    settings: KafkaSettings, specs: Iterable[TopicSpec] | None = None
) -> list[str]:
    """Create every missing topic with its partitions and configs; return the names created.

    Existing topics are left as they are (``check_topics`` reports a drift)."""
    wanted = list(TOPICS.values() if specs is None else specs)
    admin = _admin(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                name=settings.topic(spec.topic),
                num_partitions=spec.partitions,
                replication_factor=1 if _single_broker(admin) else 3,
                topic_configs=spec.configs(),
            )
            for spec in wanted
            if settings.topic(spec.topic) not in existing
        ]
        if not new:
            return []
        response = await admin.create_topics(new)
        created = []
        for name, code, *rest in response.topic_errors:
            if code == 0:
                created.append(name)
            elif code != _TOPIC_ALREADY_EXISTS:
                message = rest[0] if rest else ""
                raise RuntimeError(f"creating topic {name} failed: error {code} {message}")
        return created
    finally:
        await admin.close()


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
