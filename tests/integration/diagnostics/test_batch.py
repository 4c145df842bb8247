"""Batch diagnosis over PostgreSQL rows written by the real metrics ingest service, and the
stream on the same Kafka data: both find the same anomalies, with the same ids."""

from __future__ import annotations

import asyncio
import math
import uuid

import asyncpg
import pytest

from posttrain.diagnostics.batch import DiagnosticService
from posttrain.events import Envelope
from posttrain.events.kafka import EventConsumer
from posttrain.events.messages.diagnostics import AnomalyDetected
from posttrain.events.messages.metrics import MetricPoint, MetricsReported
from posttrain.events.topics import Topic
from posttrain.metrics_ingest.service import IngestService
from tests.integration.diagnostics.helpers import StreamProcess
from tests.unit.diagnostics.series import troubled_run
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


async def test_stream_and_batch_find_the_same_anomalies(
    kafka_settings, producer, database_url, tmp_path
):
    job = f"job-{uuid.uuid4().hex[:8]}"
    points = troubled_run()
    # The last point is a NaN: once the stream has raised it, it has raised all the others.
    last = MetricPoint(step=len(points) + 1, timestamp=points[-1].timestamp + 1, loss=math.nan)
    points.append(last)
    reports = [
        Envelope.create(
            MetricsReported(
                job_id=job,
                source="callback",
                first_seq=i,
                points=points[i : i + 25],
                pipeline_id="p-batch",
                stage="grpo",
                attempt=1,
            ),
            key=job,
        )
        for i in range(0, len(points), 25)
    ]
    stream = StreamProcess(kafka_settings, None, tmp_path)
    stream.start()
    await stream.wait_ready()
    ingest = IngestService(kafka_settings, database_url)
    stop = asyncio.Event()
    ingest_task = asyncio.create_task(ingest.run(stop))
    try:
        await producer.send_many(Topic.METRICS, reports)
        async with EventConsumer(
            kafka_settings, [Topic.ANOMALIES], group_id=None, name="t"
        ) as consumer:
            streamed: list[AnomalyDetected] = []

            async def raised_the_last():
                for r in await consumer.getmany(timeout_ms=200):
                    if isinstance(r.envelope.data, AnomalyDetected):
                        streamed.append(r.envelope.data)
                return any(a.step == last.step for a in streamed)

            await wait_for(raised_the_last, timeout=90, what="the stream's last anomaly")

        conn = await asyncpg.connect(database_url)
        try:

            async def stored():
                count = await conn.fetchval(
                    "SELECT count(*) FROM metric_points WHERE job_id = $1", job
                )
                return count == len(points)

            await wait_for(stored, timeout=60, what="every point in PostgreSQL")
        finally:
            await conn.close()
    finally:
        stop.set()
        await asyncio.wait_for(ingest_task, 60)
        stream.stop()

    async with DiagnosticService(database_url) as service:
        batch = await service.anomaly_events(job)
        result = await service.diagnose_job(job)
        at_nan = await service.diagnose_step(job, 170)
        quiet = await service.diagnose_step(job, 5)

    def key(a: AnomalyDetected):
        return (a.anomaly_id, a.anomaly_type, a.step, a.severity, a.message, a.pipeline_id)

    assert len(batch) >= 8
    assert [key(a) for a in streamed] == [key(a) for a in batch]
    kinds = {a.anomaly_type for a in batch}
    assert {"grad_explosion", "nan_inf", "kl_blowup", "reward_collapse"} <= kinds

    # The seed's keys, plus the full list.
    assert result["has_anomaly"] is True
    assert result["anomaly_type"] in {"nan_inf", "grad_explosion", "kl_blowup"}
    assert result["anomaly_message"] and result["suggestions"]
    assert [a["anomaly_id"] for a in result["anomalies"]] == [a.anomaly_id for a in batch]
    assert (at_nan["has_anomaly"], at_nan["anomaly_type"]) == (True, "nan_inf")
    assert "loss=nan" in at_nan["anomaly_message"]
    assert (quiet["has_anomaly"], quiet["anomalies"]) == (False, [])


async def test_periodic_scan_raises_oom_for_failed_stages(database_url, kafka_settings, producer):
    pipeline = f"p-{uuid.uuid4().hex[:8]}"
    attempts = (
        '[{"attempt": 1, "command_id": "c-1", "job_id": "j-oom", "failure_kind": "oom",'
        ' "error": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 4.00 GiB"}]'
    )
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO pipelines (pipeline_id, name, status, version) VALUES ($1, 'p', "
            "'failed', 1)",
            pipeline,
        )
        await conn.execute(
            "INSERT INTO pipeline_stages (pipeline_id, name, position, task, status, attempt, "
            "command_id, job_id, error, attempts) VALUES ($1, 'sft', 0, 'train_model', 'failed', "
            "1, 'c-1', 'j-oom', 'CUDA out of memory', $2::jsonb), ($1, 'eval', 1, "
            "'run_evaluation', 'failed', 1, 'c-2', 'j-err', 'ValueError: bad', '[]'::jsonb)",
            pipeline,
            attempts,
        )
    finally:
        await conn.close()
    async with DiagnosticService(database_url) as service:
        found = [a for a in await service.scan_failed_jobs() if a.pipeline_id == pipeline]
        assert [(a.job_id, a.anomaly_type, a.stage, a.severity) for a in found] == [
            ("j-oom", "gpu_oom", "sft", "critical")
        ]
        assert "Tried to allocate 4.00 GiB" in found[0].message
        again = [a for a in await service.scan_failed_jobs() if a.pipeline_id == pipeline]
        assert again[0].anomaly_id == found[0].anomaly_id  # stable: dedup downstream
        assert await service.publish_failed_jobs(producer) >= 1
    async with EventConsumer(kafka_settings, [Topic.ANOMALIES], group_id=None, name="t") as c:
        seen: list[AnomalyDetected] = []

        async def published():
            seen.extend(r.envelope.data for r in await c.getmany(timeout_ms=200))
            return [a for a in seen if a.job_id == "j-oom"]

        (event,) = await wait_for(published, timeout=20, what="gpu_oom on posttrain.anomalies")
    assert event.anomaly_id == found[0].anomaly_id
