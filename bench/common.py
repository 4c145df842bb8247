"""What every benchmark shares: settings for a throwaway namespace on the real broker."""

from __future__ import annotations

import uuid
from dataclasses import replace

from posttrain.events.kafka import KafkaSettings, ensure_topics
from posttrain.events.topics import Topic


async def fresh_namespace(prefix: str, topics: list[Topic] | None = None) -> KafkaSettings:
    """KafkaSettings for a new namespace, with its topics created."""
    base = KafkaSettings.from_env(client_id=f"bench-{prefix}")
    settings = replace(base, namespace=f"bench-{prefix}-{uuid.uuid4().hex[:8]}")
    from posttrain.events.topics import TOPICS

    specs = [TOPICS[t] for t in topics] if topics else None
    await ensure_topics(settings, specs)
    return settings


async def drop_namespace(settings: KafkaSettings) -> None:
    """Delete the namespace's topics so benchmarks leave nothing behind."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(settings.namespace + ".")]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()
