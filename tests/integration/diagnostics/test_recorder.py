"""The recorder on the real broker and database: every anomaly kept exactly once (redelivered,
re-raised, after a crash, by a recorder that reads everything again), with the actions the
pipeline event log tells of, and what it cannot read parked on the dead-letter topic."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from posttrain.diagnostics.batch import DiagnosticService
from posttrain.diagnostics.core.policy import action_id
from posttrain.diagnostics.queries import aget_anomalies, get_anomalies
from posttrain.diagnostics.recorder import AnomalyRecorder
from posttrain.events import Envelope
from posttrain.events.kafka import EventProducer, KafkaSettings
from posttrain.events.kafka.dlq import HEADER_REASON
from posttrain.events.messages.diagnostics import ActionRecommended, AlertSent, AnomalyDetected
from posttrain.events.messages.pipeline import ActionRequested, StageDispatched
from posttrain.events.messages.stage import ActionApplied
from posttrain.events.topics import TOPICS, Topic
from posttrain.testing.services import BIN, ServiceProcess, free_port, kafka_env
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def anomaly(job: str, pipeline: str, anomaly_id: str, kind: str, step: int, **extra) -> Envelope:
    data = AnomalyDetected(
        anomaly_id=anomaly_id,
        job_id=job,
        anomaly_type=kind,
        severity="critical",
        step=step,
        value=extra.pop("value", 1.0),
        message=extra.pop("message", f"{kind} at step {step}"),
        pipeline_id=pipeline,
        stage="sft",
        attempt=1,
        emitted_at=1.7e9 + step,
        **extra,
    )
    return Envelope.create(data, key=job)


def requested(pipeline: str, action: str, anomaly_id: str | None, kind: str) -> Envelope:
    data = ActionRequested(
        action_id=action,
        pipeline_id=pipeline,
        stage="sft",
        attempt=1,
        action=kind,
        factor=0.1 if kind == "adjust_learning_rate" else None,
        reason=f"{kind} asked",
        anomaly_id=anomaly_id,
        agent_id="gpu-1",
    )
    return Envelope.create(data, key=pipeline)


def applied(pipeline: str, action: str, kind: str, step: int) -> Envelope:
    data = ActionApplied(
        pipeline_id=pipeline,
        stage="sft",
        attempt=1,
        command_id="cmd-1",
        agent_id="gpu-1",
        job_id="job",
        action_id=action,
        action=kind,
        step=step,
        details={"at_step": step},
    )
    return Envelope.create(data, key=pipeline)


def refused(pipeline: str, action: str, anomaly_id: str, kind: str, reason: str):
    """An ActionRefused as the orchestrator writes it, encoded by hand: this library may not
    know the type yet, and the recorder must read it all the same."""
    doc = {
        "id": f"refusal-{action}",
        "type": "ActionRefused",
        "version": 1,
        "occurred_at": AT.isoformat(),
        "key": pipeline,
        "correlation_id": None,
        "causation_id": None,
        "data": {
            "action_id": action,
            "pipeline_id": pipeline,
            "stage": "sft",
            "attempt": 1,
            "action": kind,
            "reason": reason,
            "anomaly_id": anomaly_id,
        },
    }
    headers = [
        ("posttrain-type", b"ActionRefused"),
        ("posttrain-version", b"1"),
        ("content-type", b"application/json"),
    ]
    return pipeline.encode(), orjson.dumps(doc), headers


async def kept(conn: asyncpg.Connection, job: str) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch(
        "SELECT anomaly_id, message, xmin::text AS version, recorded_at FROM anomalies "
        "WHERE job_id = $1",
        job,
    )
    return {r["anomaly_id"]: r for r in rows}


async def action_status(conn: asyncpg.Connection, action: str) -> str | None:
    return await conn.fetchval("SELECT status FROM anomaly_actions WHERE action_id = $1", action)


async def dead_letters(settings: KafkaSettings, expected: int) -> list:
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


async def test_each_anomaly_is_kept_once_with_the_actions_taken_on_it(
    kafka_settings, producer, database_url, run_id
):
    job, pipeline = f"{run_id}-job", f"{run_id}-pipe"
    nan = anomaly(job, pipeline, f"{run_id}-a1", "nan_inf", 45, value=math.nan)
    explosion = anomaly(job, pipeline, f"{run_id}-a2", "grad_explosion", 49)
    spike = anomaly(job, pipeline, f"{run_id}-a3", "loss_spike", 80)
    # The same anomaly raised again under another envelope (the periodic scan does that).
    again = anomaly(job, pipeline, f"{run_id}-a1", "nan_inf", 45, message="raised again")
    dry_run = spike.caused(
        ActionRecommended(
            anomaly_id=spike.data.anomaly_id, job_id=job, action="rollback", reason="dry run"
        )
    )
    alert = Envelope.create(
        AlertSent(anomaly_id=nan.data.anomaly_id, job_id=job, channel="slack", attempts=1), key=job
    )
    await producer.send_many(Topic.ANOMALIES, [nan, nan, explosion, spike, again, dry_run, alert])
    await producer.send_encoded(Topic.ANOMALIES, [(job.encode(), b"\x00 not json", [])])

    pause, cut, by_hand = f"{run_id}-x1", f"{run_id}-x2", f"{run_id}-x4"
    dispatched = StageDispatched(
        pipeline_id=pipeline,
        stage="sft",
        attempt=1,
        command_id="cmd-1",
        agent_id="gpu-1",
        job_id=job,
        task="train_model",
        params={},
    )
    await producer.send_many(
        Topic.PIPELINE_EVENTS,
        [
            Envelope.create(dispatched, key=pipeline),
            requested(pipeline, pause, nan.data.anomaly_id, "pause"),
            applied(pipeline, pause, "pause", 46),
            requested(pipeline, cut, explosion.data.anomaly_id, "adjust_learning_rate"),
            requested(pipeline, by_hand, None, "force_checkpoint"),
        ],
    )
    reason = "stage sft is not running (status: paused)"
    await producer.send_encoded(
        Topic.PIPELINE_EVENTS,
        [refused(pipeline, cut, explosion.data.anomaly_id, "adjust_learning_rate", reason)],
    )

    recorder = AnomalyRecorder(kafka_settings, database_url)
    stop = asyncio.Event()
    task = asyncio.create_task(recorder.run(stop))
    conn = await asyncpg.connect(database_url)
    try:

        async def all_kept() -> bool:
            return (
                len(await kept(conn, job)) == 3
                and await action_status(conn, cut) == "refused"
                and await action_status(conn, pause) == "applied"
                and recorder.stats.dead_letters == 2
            )

        await wait_for(all_kept, timeout=60, what="three anomalies, their actions, two DLQ'd")
        assert recorder.health()["status"] == "ok"
        assert recorder.stats.anomalies_recorded == 3
        assert recorder.stats.anomalies_known == 2  # the redelivery and the re-raise

        found = await asyncio.to_thread(get_anomalies, job_id=job, database_url=database_url)
        assert [(a.step, a.anomaly_type) for a in found] == [
            (45, "nan_inf"),
            (49, "grad_explosion"),
            (80, "loss_spike"),
        ]
        first, second, third = found
        assert first.message == "nan_inf at step 45"  # the first record of an id is kept
        assert math.isnan(first.value) and first.to_dict()["value"] == "NaN"
        assert (first.pipeline_id, first.stage, first.attempt) == (pipeline, "sft", 1)
        [paused] = first.actions
        assert (paused.action_id, paused.action, paused.status) == (pause, "pause", "applied")
        assert paused.applied_step == 46 and paused.applied_details == {"at_step": 46}
        assert paused.requested_at is not None and paused.applied_at is not None
        [refusal] = second.actions
        assert (refusal.action, refusal.status, refusal.refusal) == (
            "adjust_learning_rate",
            "refused",
            reason,
        )
        assert refusal.factor == 0.1 and refusal.refused_at == AT
        [recommended] = third.actions
        assert recommended.status == "recommended" and recommended.action == "rollback"
        assert recommended.action_id == action_id(spike.data.anomaly_id, "rollback")
        # An action nobody's anomaly asked for is kept, and belongs to no anomaly.
        assert await action_status(conn, by_hand) == "requested"

        of_pipeline = await aget_anomalies(pipeline_id=pipeline, db=conn)
        assert [a.anomaly_id for a in of_pipeline] == [a.anomaly_id for a in found]
        # diagnose_job tells what the stream raised and what was done, beside its own finds.
        async with DiagnosticService(database_url) as service:
            diagnosis = await service.diagnose_job(job)
        assert [r["anomaly_id"] for r in diagnosis["recorded"]] == [a.anomaly_id for a in found]
        assert [x["status"] for r in diagnosis["recorded"] for x in r["actions"]] == [
            "applied",
            "refused",
            "recommended",
        ]

        parked = await dead_letters(kafka_settings, 2)
        assert sorted(dict(r.headers)[HEADER_REASON].decode() for r in parked) == [
            "malformed",
            "unexpected_type",
        ]
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await conn.close()


def _recorder_process(
    settings: KafkaSettings, database_url: str, log: Path, port: int | None = None
) -> ServiceProcess:
    """``posttrain diagnose record`` (the root command's way in), /healthz on ``port``."""
    http = f"127.0.0.1:{port}" if port is not None else "off"
    argv = [str(BIN / "posttrain"), "diagnose", "record", "--http", http]
    return ServiceProcess("recorder", argv, log, kafka_env(settings, database_url), port).start()


async def _messages_on(settings: KafkaSettings, topics: list[Topic]) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    await consumer.start()
    try:
        tps = [
            TopicPartition(settings.topic(t), p)
            for t in topics
            for p in range(TOPICS[t].partitions)
        ]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def test_a_crashed_restarted_or_replaying_recorder_writes_nothing_twice(
    kafka_settings, producer: EventProducer, database_url, run_id, tmp_path
):
    job, pipeline = f"{run_id}-job", f"{run_id}-pipe"
    nan = anomaly(job, pipeline, f"{run_id}-a1", "nan_inf", 45)
    pause = f"{run_id}-x1"
    await producer.send(Topic.ANOMALIES, nan)
    await producer.send(
        Topic.PIPELINE_EVENTS, requested(pipeline, pause, nan.data.anomaly_id, "pause")
    )

    log = tmp_path / "recorder.log"
    conn = await asyncpg.connect(database_url)
    first = _recorder_process(kafka_settings, database_url, log)
    try:

        async def requested_kept() -> bool:
            return nan.data.anomaly_id in await kept(conn, job) and (
                await action_status(conn, pause) == "requested"
            )

        await wait_for(requested_kept, timeout=60, what=f"the first records ({log})")
        before = (await kept(conn, job))[nan.data.anomaly_id]
        first.kill()  # a crash: whatever it had not committed is read again

        sentinel = anomaly(job, pipeline, f"{run_id}-a5", "loss_spike", 90)
        await producer.send_many(Topic.ANOMALIES, [nan, sentinel])  # a redelivery, then more
        await producer.send(Topic.PIPELINE_EVENTS, applied(pipeline, pause, "pause", 46))
        second = _recorder_process(kafka_settings, database_url, log, free_port())
        try:
            # Ready means it owns partitions of both topics, not merely that it is listening.
            health = await second.wait_ready(timeout=60)
            assert health["status"] == "ok"
            assert {p.split(":")[0] for p in health["assigned_partitions"]} == {
                kafka_settings.topic(Topic.ANOMALIES),
                kafka_settings.topic(Topic.PIPELINE_EVENTS),
            }

            async def caught_up() -> bool:
                return sentinel.data.anomaly_id in await kept(conn, job) and (
                    await action_status(conn, pause) == "applied"
                )

            await wait_for(caught_up, timeout=60, what=f"the restarted recorder ({log})")
            second.stop(timeout=30)
            assert second.process is not None and second.process.returncode == 0, second.tail()
        finally:
            second.kill()
        after = await kept(conn, job)
        assert after[nan.data.anomaly_id]["version"] == before["version"]  # never rewritten
        assert after[nan.data.anomaly_id]["recorded_at"] == before["recorded_at"]

        # A recorder of a new group reads both topics from the start: everything again.
        total = await _messages_on(kafka_settings, [Topic.ANOMALIES, Topic.PIPELINE_EVENTS])
        replay = AnomalyRecorder(kafka_settings, database_url, group_id=f"{run_id}-replay")
        await replay.start()
        try:

            async def read_everything() -> bool:
                await replay.process_batch(timeout_ms=200)
                return replay.stats.messages >= total

            await wait_for(read_everything, timeout=60, what="the replay of both topics")
        finally:
            await replay.stop()
        assert replay.stats.anomalies_recorded == 0
        assert replay.stats.anomalies_known == 3  # the anomaly twice, the sentinel once
        assert await kept(conn, job) == after
        [kept_anomaly] = [
            a
            for a in await aget_anomalies(job_id=job, db=conn)
            if a.anomaly_id == nan.data.anomaly_id
        ]
        assert [(x.action_id, x.status) for x in kept_anomaly.actions] == [(pause, "applied")]
    finally:
        first.kill()
        await conn.close()
