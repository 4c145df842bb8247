"""What every benchmark shares: a throwaway topic namespace and database on the real stack,
and the few ways figures are summed up and printed."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import replace

from posttrain.events.kafka import KafkaSettings, ensure_topics
from posttrain.events.topics import TOPICS, Topic
from posttrain.service.settings import database_url
from posttrain.testing import databases


async def fresh_namespace(prefix: str, topics: list[Topic] | None = None) -> KafkaSettings:
    """KafkaSettings for a new namespace, with its topics created."""
    base = KafkaSettings.from_env(client_id=f"bench-{prefix}")
    settings = replace(base, namespace=f"bench-{prefix}-{uuid.uuid4().hex[:8]}")
    specs = [TOPICS[t] for t in topics] if topics else None
    await ensure_topics(settings, specs)
    return settings


async def drop_namespace(settings: KafkaSettings) -> None:
    """Delete the namespace's topics so benchmarks leave nothing behind."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**settings.client_options())
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(settings.namespace + ".")]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


async def fresh_database(prefix: str) -> str:
    """The URL of a new, empty database on the stack's server (never the default one)."""
    return await databases.create_database(database_url(), f"bench_{prefix}")


async def drop_database(url: str) -> None:
    """Drop a database made by ``fresh_database`` (``posttrain.testing.databases``)."""
    await databases.drop_database(database_url(), url)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def load() -> str:
    """The machine's load averages, printed beside a figure: the machine is shared."""
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f} on {os.cpu_count()} cpus"
