"""``EventProducer.send_batches`` on the real broker, as the orchestrator uses it: a
transaction's messages handed over as record batches, all to one partition or each to its
key's, in order, committed or aborted with the transaction; ``SentBatch.end`` is the offset
after the last message sent."""

from __future__ import annotations

import pytest

from posttrain.events import Envelope, decode, encode
from posttrain.events.kafka import EventProducer
from posttrain.events.kafka.producer import partition_for
from posttrain.events.messages import PipelineSucceeded
from posttrain.events.topics import TOPICS, Topic
from tests.raw import read_raw

pytestmark = pytest.mark.integration


def succeeded(pid: str) -> Envelope[PipelineSucceeded]:
    return Envelope.create(PipelineSucceeded(pipeline_id=pid), key=pid)


async def test_a_transactions_batches_land_in_order_and_end_where_the_log_ends(kafka_settings):
    events = [succeeded(f"p{i:04d}") for i in range(300)]
    keyed = [succeeded(f"k{i}") for i in range(40)]
    producer = EventProducer(kafka_settings, transactional_id="batches", linger_ms=0)
    async with producer as prod, prod.client.transaction():
        sent = await prod.send_batches(
            Topic.PIPELINE_EVENTS, [encode(e) for e in events], partition=2
        )
        await prod.send_batches(Topic.AGENT_COMMANDS, [encode(e) for e in keyed])

    on_events = await read_raw(kafka_settings, Topic.PIPELINE_EVENTS, len(events))
    assert {r.partition for r in on_events} == {2}
    assert [decode(r.value, r.headers).id for r in on_events] == [e.id for e in events]
    assert sent[-1].end() == on_events[-1].offset + 1
    assert sum(batch.records for batch in sent) == len(events)

    on_commands = await read_raw(kafka_settings, Topic.AGENT_COMMANDS, len(keyed))
    partitions = TOPICS[Topic.AGENT_COMMANDS].partitions
    for record in on_commands:
        assert record.partition == partition_for(record.key, partitions)
    by_key = {r.key.decode(): decode(r.value, r.headers).id for r in on_commands}
    assert by_key == {e.key: e.id for e in keyed}


async def test_batches_of_an_aborted_transaction_are_never_read(kafka_settings):
    async with EventProducer(kafka_settings, transactional_id="aborted", linger_ms=0) as prod:
        await prod.client.begin_transaction()
        await prod.send_batches(Topic.PIPELINE_EVENTS, [encode(succeeded("lost"))], partition=0)
        await prod.client.abort_transaction()
        async with prod.client.transaction():
            await prod.send_batches(Topic.PIPELINE_EVENTS, [encode(succeeded("kept"))], partition=0)

    records = await read_raw(kafka_settings, Topic.PIPELINE_EVENTS, 1)
    assert [r.key for r in records] == [b"kept"]
