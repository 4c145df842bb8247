"""The librdkafka producer of the training process on the real broker: its records land where
aiokafka's would, are read by ``decode``, and an unreachable broker is said at once."""

from __future__ import annotations

import socket
import time
from dataclasses import replace

import pytest
from aiokafka import AIOKafkaConsumer

from posttrain.events import Envelope, decode, encode
from posttrain.events.kafka import KafkaSettings
from posttrain.events.kafka.blocking import BlockingProducer, ProduceFailed
from posttrain.events.kafka.producer import partition_for
from posttrain.events.messages import MetricPoint, MetricsReported
from posttrain.events.topics import TOPICS, Topic
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _message(job_id: str, seq: int) -> MetricsReported:
    point = MetricPoint(step=seq, timestamp=1.0, loss=float("nan"))
    return MetricsReported(job_id=job_id, source="src", first_seq=seq, points=[point])


async def test_records_land_on_the_java_clients_partition_and_decode(
    kafka_settings: KafkaSettings,
) -> None:
    jobs = [f"job-{i}" for i in range(24)]
    records = [encode(Envelope.create(_message(job, i), key=job)) for i, job in enumerate(jobs)]
    producer = BlockingProducer(kafka_settings, timeout_s=10)
    try:
        producer.probe(Topic.METRICS)
        assert producer.send(Topic.METRICS, records) == len(records)
    finally:
        producer.close()

    consumer = AIOKafkaConsumer(
        kafka_settings.topic(Topic.METRICS),
        bootstrap_servers=kafka_settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list = []
    try:

        async def all_read() -> bool:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                got.extend(batch)
            return len(got) >= len(jobs)

        await wait_for(all_read, timeout=30, what="the records on the metrics topic")
    finally:
        await consumer.stop()

    partitions = TOPICS[Topic.METRICS].partitions
    assert len({r.partition for r in got}) > 1  # the keys spread, as they should
    for record in got:
        envelope = decode(record.value, record.headers)
        job = envelope.data.job_id
        assert record.key == job.encode()
        assert record.partition == partition_for(job.encode(), partitions)
        assert envelope.data.points[0].loss != envelope.data.points[0].loss  # NaN kept


def test_an_unreachable_broker_is_refused_at_once(kafka_settings: KafkaSettings) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once the socket is closed
    away = replace(kafka_settings, bootstrap_servers=f"127.0.0.1:{port}")
    producer = BlockingProducer(away, timeout_s=30)
    started = time.monotonic()
    with pytest.raises(ProduceFailed, match="unreachable"):
        producer.probe(Topic.METRICS)
    assert time.monotonic() - started < 10  # the refused connection, not the 30 s timeout
    producer.close()
