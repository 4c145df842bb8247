"""A just-formatted broker, as on a new machine: the stack's preparation leaves it ready for
every client, and the diagnostics stream, started on it at once, reads, raises, acts and alerts
through every one of its tables.

Before the fix, Faust created its changelog topics and subscribed in the same breath: on a cold
broker the last changelog was not yet in the group's metadata, the assignment left it out, and
every write to that table (the alert dedup) failed with PartitionsMismatch, for good.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import replace

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from posttrain.events.kafka import (
    EventConsumer,
    EventProducer,
    KafkaSettings,
    await_coordinators,
    ensure_topics,
)
from posttrain.events.messages.diagnostics import AlertSent, AnomalyDetected
from posttrain.events.messages.pipeline import RequestAction
from posttrain.events.topics import TOPICS, Topic
from posttrain.testing.platform import private_stack
from tests.integration.diagnostics.helpers import Receiver, StreamProcess
from tests.integration.diagnostics.test_stream import Collector, points, report

pytestmark = pytest.mark.integration


@pytest.fixture
def cold_broker():
    """A broker formatted and started by the stack's own `up`, on a data directory of its own."""
    with private_stack("kafka") as stack:
        yield stack


async def test_a_cold_broker_is_ready_for_every_client_once_prepared(cold_broker, tmp_path):
    settings = KafkaSettings(bootstrap_servers=cold_broker.bootstrap, namespace="cold")
    created = await ensure_topics(settings)
    await await_coordinators(settings)

    assert len(created) == len(TOPICS)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics(
            [settings.topic(t) for t in TOPICS] + ["__consumer_offsets", "__transaction_state"]
        )
        leaderless = [
            (t["topic"], p["partition"])
            for t in described
            for p in t["partitions"]
            if p["leader"] < 0 or p["error_code"]
        ]
        assert {t["topic"] for t in described} >= {"__consumer_offsets", "__transaction_state"}
        assert leaderless == []
        assert await admin.find_coordinator("any-group") >= 0
    finally:
        await admin.close()

    # The diagnostics stream, started on this broker straight away, in a fresh namespace.
    stream_settings = replace(settings, namespace=f"cold-{uuid.uuid4().hex[:6]}")
    await ensure_topics(stream_settings)
    receiver = await Receiver().start()
    config = {
        "default": {
            "alerts": {
                "channels": [{"name": "hook", "kind": "webhook", "url": receiver.url + "/a"}]
            }
        }
    }
    stream = StreamProcess(stream_settings, config, tmp_path)
    stream.start()
    try:
        health = await stream.wait_ready()
        assert health["ready"] is True
        topics = [Topic.ANOMALIES, Topic.PIPELINE_COMMANDS, Topic.ALERTS]
        async with (
            EventConsumer(stream_settings, topics, group_id=None, name="cold") as consumer,
            EventProducer(stream_settings) as producer,
        ):
            collector = Collector(consumer)
            job = f"job-{uuid.uuid4().hex[:6]}"
            await producer.send(
                Topic.METRICS, report(job, points(1, 31, at={30: {"loss": math.nan}}), 0)
            )
            # Every table took its write: the job's state (detect), the policy (act), the
            # dedup (alert), in the order the stream writes them.
            (anomaly,) = await collector.wait(AnomalyDetected, job_id=job, timeout=60)
            (request,) = await collector.wait(RequestAction, anomaly_id=anomaly.anomaly_id)
            (sent,) = await collector.wait(AlertSent, anomaly_id=anomaly.anomaly_id)
        assert (anomaly.anomaly_type, anomaly.step) == ("nan_inf", 30)
        assert request.action == "pause"
        assert sent.channel == "hook" and len(receiver.requests["/a"]) == 1
        assert "PartitionsMismatch" not in stream.tail(100_000)
    finally:
        stream.stop()
        await receiver.stop()


async def test_the_stream_creates_its_changelogs_with_leaders_before_its_worker_subscribes(
    kafka_settings,
):
    """What closes the race above, checked directly (the race itself needs a slow broker)."""
    from posttrain.diagnostics.stream import create_stream

    stream = create_stream(kafka_settings)
    changelogs = stream.changelog_topics()
    await stream.prepare_topics()

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap_servers)
    await admin.start()
    try:
        described = {
            t["topic"]: t for t in await admin.describe_topics([c.name for c in changelogs])
        }
    finally:
        await admin.close()
    assert sorted(described) == sorted(
        f"{kafka_settings.namespace}.posttrain-diagnostics-{table}-changelog"
        for table in ("jobs", "failures-seen", "policies", "alert-dedup")
    )
    for spec in changelogs:
        partitions = described[spec.name]["partitions"]
        # The partitions of the topic each table shadows, every one with a leader.
        assert len(partitions) == spec.partitions and all(p["leader"] >= 0 for p in partitions)
    jobs = next(c for c in changelogs if c.name.endswith("-jobs-changelog"))
    assert jobs.partitions == TOPICS[Topic.METRICS].partitions
