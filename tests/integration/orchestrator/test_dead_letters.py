"""An input the orchestrator cannot read is parked on the dead-letter topic in the same
transaction as the decisions and offsets of its batch, and the orchestrator goes on."""

from __future__ import annotations

import asyncio

import pytest

from posttrain.events import Envelope
from posttrain.events.kafka.dlq import HEADER_CONSUMER, HEADER_REASON, HEADER_TOPIC
from posttrain.events.messages import CancelPipeline, CommandRefused
from posttrain.events.topics import Topic
from posttrain.orchestrator.shell.service import Orchestrator
from posttrain.testing.orchestrator import read_log
from tests.raw import read_raw
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


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

        (parked,) = await read_raw(kafka_settings, Topic.DLQ, 1)
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
