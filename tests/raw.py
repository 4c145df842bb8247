"""Reading a topic's raw records in tests (raw: the dead-letter topic holds what cannot be
decoded, and some tests look at bytes and headers as the broker has them)."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer

from posttrain.events.kafka import KafkaSettings
from posttrain.events.topics import Topic
from tests.waiting import wait_for


async def read_raw(
    settings: KafkaSettings,
    topic: Topic,
    expected: int,
    *,
    isolation: str = "read_committed",
    timeout: float = 30.0,
) -> list[Any]:
    """Every raw record of a topic, from the beginning, once ``expected`` have arrived."""
    consumer = AIOKafkaConsumer(
        settings.topic(topic),
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level=isolation,
    )
    await consumer.start()
    records: list[Any] = []
    try:

        async def enough() -> bool:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
            return len(records) >= expected

        await wait_for(enough, timeout=timeout, what=f"{expected} records on {topic}")
    finally:
        await consumer.stop()
    return records
