"""The event contracts on the real broker: round trips, the dead-letter topic, upcasting and
transactions that a crash cannot half-commit."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from posttrain.events import Envelope, decode
from posttrain.events.kafka import EventConsumer
from posttrain.events.kafka.dlq import HEADER_OFFSET, HEADER_REASON, HEADER_TOPIC
from posttrain.events.messages import MetricPoint, MetricsReported, StageFailed
from posttrain.events.topics import Topic, topics_for_type
from tests.raw import read_raw
from tests.samples import sample_messages
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


async def test_every_message_type_round_trips_through_kafka(kafka_settings, producer):
    sent = {}
    for i, message in enumerate(sample_messages()):
        envelope = Envelope.create(
            message,
            key=f"key-{i}",
            correlation_id=f"corr-{i}",
            causation_id=f"cause-{i}",
            headers={"trace-id": f"tr-{i}"},
        )
        topic = topics_for_type(message.TYPE)[0]
        sent[envelope.id] = (topic, envelope)
        await producer.send(topic, envelope)
    by_topic: dict[Topic, int] = {}
    for topic, _ in sent.values():
        by_topic[topic] = by_topic.get(topic, 0) + 1
    received = {}
    for topic, count in by_topic.items():
        for record in await read_raw(kafka_settings, topic, count):
            envelope = decode(record.value, record.headers)
            assert record.key == envelope.key.encode()
            assert dict(record.headers)["posttrain-type"] == envelope.type.encode()
            assert dict(record.headers)["trace-id"] == envelope.headers["trace-id"].encode()
            received[envelope.id] = (Topic(record.topic.split(".", 1)[1]), envelope)
    assert received == sent


async def test_unreadable_messages_go_to_the_dlq_and_the_consumer_goes_on(kafka_settings, producer):
    topic = kafka_settings.topic(Topic.METRICS)
    good = Envelope.create(
        MetricsReported(
            job_id="job-1",
            source="s",
            first_seq=0,
            points=[MetricPoint(step=1, timestamp=1.0, loss=0.5)],
        ),
        key="job-1",
    )
    future = orjson.dumps(
        {
            "id": "f",
            "type": "MetricsReported",
            "version": 99,
            "key": "job-1",
            "occurred_at": "2026-11-28T00:00:00+00:00",
            "data": {},
        }
    )
    unknown = orjson.dumps(
        {
            "id": "u",
            "type": "Telepathy",
            "version": 1,
            "key": "job-1",
            "occurred_at": "2026-11-28T00:00:00+00:00",
            "data": {},
        }
    )
    bad = [
        (b"\x89PNG not json", "malformed"),
        (unknown, "unknown_type"),
        (future, "future_version"),
    ]
    for value, _ in bad:
        await producer.client.send_and_wait(topic, key=b"job-1", value=value)
    await producer.send(Topic.METRICS, good)

    consumer = EventConsumer(
        kafka_settings, [Topic.METRICS], group_id="dlq-test", name="dlq-test", dead_letters=producer
    )
    await consumer.start()
    try:
        got: list[Any] = []

        async def good_arrived() -> bool:
            got.extend(await consumer.getmany(timeout_ms=200))
            return bool(got)

        await wait_for(good_arrived, what="the valid message after three bad ones")
        await consumer.commit()
        assert [r.envelope for r in got] == [good]
        assert consumer.dead_lettered == 3
    finally:
        await consumer.stop()

    parked = await read_raw(kafka_settings, Topic.DLQ, 3)
    assert [(r.value, dict(r.headers)[HEADER_REASON].decode()) for r in parked] == [
        (value, reason) for value, reason in bad
    ]
    assert {dict(r.headers)[HEADER_TOPIC] for r in parked} == {topic.encode()}
    assert [int(dict(r.headers)[HEADER_OFFSET]) for r in parked] == [0, 1, 2]


async def test_v1_payload_is_read_as_the_current_version(kafka_settings, producer):
    v1 = orjson.dumps(
        {
            "id": "old",
            "type": "StageFailed",
            "version": 1,
            "key": "p-1",
            "occurred_at": "2025-01-01T00:00:00+00:00",
            "data": {
                "pipeline_id": "p-1",
                "stage": "sft",
                "attempt": 2,
                "command_id": "c",
                "agent_id": "a",
                "job_id": "j",
                "finished_at": 3.0,
                "error": "RuntimeError: CUDA out of memory. Tried to allocate 1.00 GiB",
            },
        }
    )
    await producer.client.send_and_wait(
        kafka_settings.topic(Topic.STAGE_REPORTS), key=b"p-1", value=v1
    )
    async with EventConsumer(
        kafka_settings, [Topic.STAGE_REPORTS], group_id=None, name="upcast-test"
    ) as consumer:
        got: list[Any] = []

        async def arrived() -> bool:
            got.extend(await consumer.getmany(timeout_ms=200))
            return bool(got)

        await wait_for(arrived, what="the v1 StageFailed")
    message = got[0].envelope.data
    assert isinstance(message, StageFailed) and message.VERSION == 2
    assert (message.kind, message.attempt) == ("oom", 2)


async def test_a_client_that_cannot_start_is_closed_again(kafka_settings):
    """A producer or a consumer whose broker does not answer raises from ``async with`` and
    leaves no half-open client behind (aiokafka warns "Unclosed ..." when one is collected)."""
    import dataclasses
    import gc
    import warnings

    from aiokafka.errors import KafkaConnectionError

    from posttrain.events.kafka import EventProducer

    nowhere = dataclasses.replace(kafka_settings, bootstrap_servers="127.0.0.1:1")
    clients = [
        EventProducer(nowhere, request_timeout_ms=2000),
        EventConsumer(nowhere, [Topic.METRICS], group_id=None, name="t", request_timeout_ms=2000),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for client in clients:
            with pytest.raises(KafkaConnectionError):
                async with client:
                    raise AssertionError("started against no broker")
        del client
        clients.clear()
        gc.collect()
    assert [str(w.message) for w in caught if "Unclosed" in str(w.message)] == []
