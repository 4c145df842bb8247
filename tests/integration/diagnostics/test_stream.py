"""The Faust stream as a real worker process on the real broker: anomalies, actions as
RequestAction commands, dry run, OOM failures, the DLQ, and a crash in the middle of a job."""

from __future__ import annotations

import math
import time
import uuid

import pytest
import pytest_asyncio

from posttrain.events import Envelope
from posttrain.events.kafka import EventConsumer, EventProducer
from posttrain.events.kafka.dlq import HEADER_REASON
from posttrain.events.messages.diagnostics import ActionRecommended, AnomalyDetected
from posttrain.events.messages.metrics import MetricPoint, MetricsReported
from posttrain.events.messages.pipeline import RequestAction
from posttrain.events.messages.stage import StageFailed
from posttrain.events.topics import Topic
from tests.integration.diagnostics.helpers import Receiver, StreamProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.integration
STARTUP_S = 90  # a cold worker joins the group and recovers its tables first


def points(start: int, stop: int, **overrides: dict[int, dict[str, float]]) -> list[MetricPoint]:
    """Healthy points start..stop-1 (loss ~2, grad_norm ~1), with per-step overrides."""
    out = []
    for step in range(start, stop):
        fields = {
            "loss": 2.0 + 0.01 * math.sin(step),
            "grad_norm": 1.0 + 0.05 * math.cos(step),
            "learning_rate": 1e-4,
        }
        fields.update(overrides.get("at", {}).get(step, {}))
        out.append(MetricPoint(step=step, timestamp=time.time(), **fields))
    return out


def report(job: str, pts: list[MetricPoint], first_seq: int, pipeline: str | None = "p-1"):
    data = MetricsReported(
        job_id=job,
        source="callback",
        first_seq=first_seq,
        points=pts,
        pipeline_id=pipeline,
        stage="train" if pipeline else None,
        attempt=1 if pipeline else None,
    )
    return Envelope.create(data, key=job)


class Collector:
    def __init__(self, consumer: EventConsumer) -> None:
        self.consumer = consumer
        self.items: list = []

    async def poll(self) -> list:
        self.items.extend(await self.consumer.getmany(timeout_ms=200))
        return self.items

    def of(self, cls, **where):
        return [
            r
            for r in self.items
            if isinstance(r.envelope.data, cls)
            and all(getattr(r.envelope.data, k) == v for k, v in where.items())
        ]

    async def wait(self, cls, count: int = 1, timeout: float = 30, **where):
        async def enough():
            await self.poll()
            return len(self.of(cls, **where)) >= count

        await wait_for(enough, timeout=timeout, what=f"{count} x {cls.__name__} {where}")
        return [r.envelope.data for r in self.of(cls, **where)]


@pytest_asyncio.fixture
async def collector(kafka_settings):
    topics = [Topic.ANOMALIES, Topic.PIPELINE_COMMANDS]
    async with EventConsumer(kafka_settings, topics, group_id=None, name="test-read") as c:
        yield Collector(c)


async def test_anomalies_become_actions_on_the_pipeline_command_topic(
    kafka_settings, producer: EventProducer, collector, tmp_path
):
    config = {"pipelines": {"p-dry": {"actions": {"dry_run": True}}}}
    stream = StreamProcess(kafka_settings, config, tmp_path)
    stream.start()
    await stream.wait_ready()
    try:
        nan_job, grad_job, dry_job = (f"job-{uuid.uuid4().hex[:6]}" for _ in range(3))
        await producer.send(
            Topic.METRICS, report(nan_job, points(1, 31, at={30: {"loss": math.nan}}), 0)
        )
        await producer.send(
            # An explosion is a level: three high steps (one alone is a healthy spike).
            Topic.METRICS,
            report(grad_job, points(1, 43, at={s: {"grad_norm": 80.0} for s in (40, 41, 42)}), 0),
        )
        await producer.send(
            Topic.METRICS,
            report(dry_job, points(1, 6, at={5: {"loss": math.inf}}), 0, pipeline="p-dry"),
        )
        (nan,) = await collector.wait(AnomalyDetected, job_id=nan_job, timeout=STARTUP_S)
        assert (nan.anomaly_type, nan.step, nan.severity) == ("nan_inf", 30, "critical")
        assert (nan.pipeline_id, nan.stage, nan.attempt) == ("p-1", "train", 1)
        assert nan.suggestions and nan.emitted_at is not None
        (pause,) = await collector.wait(RequestAction, anomaly_id=nan.anomaly_id)
        assert (pause.action, pause.pipeline_id, pause.stage, pause.step) == (
            "pause",
            "p-1",
            "train",
            30,
        )
        record = collector.of(RequestAction, anomaly_id=nan.anomaly_id)[0]
        assert record.topic == kafka_settings.topic(Topic.PIPELINE_COMMANDS)
        assert record.envelope.key == "p-1"  # keyed by pipeline: the orchestrator's partition

        (grad,) = await collector.wait(AnomalyDetected, job_id=grad_job)
        assert (grad.anomaly_type, grad.step) == ("grad_explosion", 42)
        (cut,) = await collector.wait(RequestAction, anomaly_id=grad.anomaly_id)
        assert (cut.action, cut.factor) == ("adjust_learning_rate", 0.1)

        (dry,) = await collector.wait(AnomalyDetected, job_id=dry_job)
        (recommended,) = await collector.wait(ActionRecommended, job_id=dry_job)
        assert (recommended.action, recommended.anomaly_id) == ("pause", dry.anomaly_id)
        assert collector.of(RequestAction, anomaly_id=dry.anomaly_id) == []

        # A poison message goes to the DLQ and the stream goes on; an OOM failure is raised.
        await producer.client.send_and_wait(
            kafka_settings.topic(Topic.METRICS), key=nan_job.encode(), value=b"{not json"
        )
        failed = StageFailed(
            pipeline_id="p-1",
            stage="train",
            attempt=2,
            command_id="cmd-oom",
            agent_id="a1",
            job_id=nan_job,
            finished_at=time.time(),
            kind="oom",
            error="torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        )
        await producer.send(Topic.STAGE_REPORTS, Envelope.create(failed, key="p-1"))
        await producer.send(Topic.STAGE_REPORTS, Envelope.create(failed, key="p-1"))  # again
        (oom,) = await collector.wait(AnomalyDetected, job_id=nan_job, anomaly_type="gpu_oom")
        assert "Tried to allocate 2.00 GiB" in oom.message and oom.attempt == 2

        # The DLQ holds raw bytes, which the reader cannot decode: read them raw.
        async with EventConsumer(
            kafka_settings, [Topic.DLQ], group_id=None, name="dlq-read"
        ) as raw:
            got = []

            async def dead():
                batches = await raw.client.getmany(timeout_ms=200)
                got.extend(r for rs in batches.values() for r in rs)
                return got

            (dead_letter,) = await wait_for(dead, timeout=30, what="the poison message")
        assert dead_letter.value == b"{not json"
        assert dict(dead_letter.headers)[HEADER_REASON] == b"malformed"
        # Nothing else was raised for these jobs.
        await collector.poll()
        assert len(collector.of(AnomalyDetected, job_id=nan_job)) == 2
        assert len(collector.of(AnomalyDetected, job_id=grad_job)) == 1
    finally:
        stream.stop()


async def test_a_crash_mid_job_keeps_the_windows_and_sends_no_duplicate_alert(
    kafka_settings, producer: EventProducer, collector, tmp_path
):
    receiver = await Receiver().start()
    config = {
        "default": {
            "alerts": {
                "channels": [{"name": "hook", "kind": "webhook", "url": receiver.url + "/a"}]
            }
        }
    }
    stream = StreamProcess(kafka_settings, config, tmp_path)
    job = f"job-{uuid.uuid4().hex[:6]}"
    try:
        stream.start()
        await stream.wait_ready()
        # 40 healthy points, then NaN at 41: one anomaly, one alert.
        await producer.send(
            Topic.METRICS, report(job, points(1, 42, at={41: {"loss": math.nan}}), 0)
        )
        await collector.wait(AnomalyDetected, job_id=job, timeout=STARTUP_S)
        await wait_for(lambda: len(receiver.requests["/a"]) >= 1, timeout=30, what="first alert")
        # Killed without warning: offsets may not be committed, the tables are in their changelog.
        stream.kill()
        stream.start()
        await stream.wait_ready()
        # A spike 9 points after the restart: visible only with the 41 points from before it.
        await producer.send(Topic.METRICS, report(job, points(42, 52, at={50: {"loss": 2.5}}), 41))
        spikes = await collector.wait(
            AnomalyDetected, job_id=job, anomaly_type="loss_spike", timeout=STARTUP_S
        )
        await wait_for(lambda: len(receiver.requests["/a"]) >= 2, timeout=30, what="second alert")
        assert [s.step for s in spikes] == [50]
        # The window holds 40 losses from before the crash (41 was NaN) and 8 after it.
        assert spikes[0].window["points"] == 48
        stream.stop()
        await collector.poll()
        anomalies = [r.envelope.data for r in collector.of(AnomalyDetected, job_id=job)]
        assert sorted((a.anomaly_type, a.step) for a in anomalies) == [
            ("loss_spike", 50),
            ("nan_inf", 41),
        ]
        alerts = receiver.bodies("/a")
        assert sorted((b["anomaly"], b["step"]) for b in alerts) == [
            ("loss_spike", 50),
            ("nan_inf", 41),
        ]
    finally:
        stream.stop()
        await receiver.stop()
