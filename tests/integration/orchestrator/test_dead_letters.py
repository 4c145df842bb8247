"""An input the orchestrator cannot read is parked on the dead-letter topic in the same
transaction as the decisions and offsets of its batch, and the orchestrator goes on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from posttrain.events import Envelope
from posttrain.events.kafka import KafkaSettings
from posttrain.events.kafka.dlq import HEADER_CONSUMER, HEADER_REASON, HEADER_TOPIC
from posttrain.events.messages import CancelPipeline, CommandRefused
from posttrain.events.topics import Topic
from posttrain.orchestrator.shell.service import Orchestrator
from posttrain.testing.orchestrator import read_log
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


async def _parked(settings: KafkaSettings) -> list[Any]:
    """The raw records of the dead-letter topic (raw: what it holds cannot be decoded)."""
    consumer = AIOKafkaConsumer(
        settings.topic(Topic.DLQ),
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    records: list[Any] = []
    try:

        async def enough() -> bool:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
            return bool(records)

        await wait_for(enough, timeout=30, what="the unreadable command on the DLQ")
    finally:
        await consumer.stop()
    return records


async def test_an_unreadable_command_is_parked_and_the_next_one_decided(kafka_settings, producer):
    orchestrator = Orchestrator(kafka_settings, tick_interval_s=0.2, session_timeout_ms=2000)
    stop = asyncio.Event()
    await orchestrator.start()
    task = asyncio.create_task(orchestrator.run(stop))
    try:
        topic = kafka_settings.topic(Topic.PIPELINE_COMMANDS)
        await producer.client.send_and_wait(topic, key=b"p-1", value=b"{not json")
        cancel = Envelope.create(CancelPipeline(pipeline_id="p-1"), key="p-1")
        await producer.send(Topic.PIPELINE_COMMANDS, cancel)

        (parked,) = await _parked(kafka_settings)
        events = await wait_for(
            lambda: read_log(kafka_settings), timeout=30, what="the answer to the cancel"
        )
        await wait_for(
            lambda: orchestrator.stats.dead_letters == 1, timeout=10, what="the count of it"
        )
    finally:
        stop.set()
        await task
        await orchestrator.stop()

    headers = dict(parked.headers)
    assert parked.value == b"{not json"
    assert headers[HEADER_REASON] == b"malformed"
    assert headers[HEADER_TOPIC] == topic.encode()
    assert headers[HEADER_CONSUMER] == b"orchestrator"
    (answer,) = [e.data for e in events]
    assert isinstance(answer, CommandRefused) and answer.command == "CancelPipeline"
