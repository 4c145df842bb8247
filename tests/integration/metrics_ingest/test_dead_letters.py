"""Poison messages land on the dead-letter topic, with the reason, and the points after them
are still ingested."""

from __future__ import annotations

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from posttrain.events import encode
from posttrain.events.kafka.dlq import HEADER_OFFSET, HEADER_REASON
from posttrain.events.topics import Topic
from posttrain.metrics_ingest.service import IngestService
from tests.integration.metrics_ingest.helpers import messages, same_points, stored
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


async def test_a_malformed_message_goes_to_the_dlq_and_later_points_are_ingested(
    kafka_settings, producer, database_url, run_id
):
    job = f"{run_id}-dlq"
    good, expected = messages(job, "trainer", 3_000, per_message=100)
    key, value, headers = encode(good[0])

    doc = orjson.loads(value)
    doc["data"]["points"][0]["step"] = "not a step"
    invalid = orjson.dumps(doc)
    doc = orjson.loads(value)
    doc["data"]["points"][0]["step"] = 2**63  # a valid int that no bigint column can hold
    unstorable = orjson.dumps(doc)
    poison = [
        (key, b"\x00\x01 not json at all", headers),
        (key, invalid, headers),
        (key, unstorable, headers),
    ]
    # Same key as the good messages: same partition, so the good ones after the poison must
    # get past it.
    await producer.send_many(Topic.METRICS, good[:10])
    await producer.send_encoded(Topic.METRICS, poison)
    await producer.send_many(Topic.METRICS, good[10:])

    service = IngestService(kafka_settings, database_url)
    await service.start()
    conn = await asyncpg.connect(database_url)
    try:
        await wait_for(lambda: _stored_all(conn, job, expected), timeout=60, what="the good points")
        parked = await _dead_letters(kafka_settings, 3)
        assert [r.value for r in parked] == [p[1] for p in poison]
        reasons = [dict(r.headers)[HEADER_REASON].decode() for r in parked]
        assert reasons == ["malformed", "invalid", "unstorable"]
        offsets = [int(dict(r.headers)[HEADER_OFFSET]) for r in parked]
        assert offsets == sorted(offsets)
        assert service.stats.dead_letters == 3
    finally:
        await conn.close()
        await service.stop()


async def _stored_all(conn: asyncpg.Connection, job: str, expected: dict) -> bool:
    return same_points(await stored(conn, [job]), expected)


async def _dead_letters(settings, expected: int) -> list:
    consumer = AIOKafkaConsumer(
        settings.topic(Topic.DLQ),
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list = []
    try:

        async def enough() -> bool:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
            return len(records) >= expected

        await wait_for(enough, timeout=30, what=f"{expected} dead letters")
    finally:
        await consumer.stop()
    return records
