"""The anomalies endpoints: what the recorder kept, with the actions taken on each, to a viewer."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import asyncpg
import pytest

from posttrain.diagnostics.core.records import ActionRecord, AnomalyRecord
from posttrain.diagnostics.store import write_records
from tests.integration.gateway.test_api import gateway

pytestmark = pytest.mark.integration

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _anomaly(run_id: str, name: str, job: str, stage: str, kind: str, step: int, value: float):
    return AnomalyRecord(
        anomaly_id=f"{run_id}-{name}",
        job_id=job,
        anomaly_type=kind,
        severity="critical",
        step=step,
        value=value,
        message=f"{kind} at step {step}",
        detected_at=AT,
        event_id=f"event-{name}",
        pipeline_id=f"{run_id}-pipe",
        stage=stage,
        attempt=1,
        suggestions=("Pause the run.",),
    )


async def test_a_viewer_reads_a_jobs_and_a_pipelines_anomalies_with_their_actions(
    kafka_settings, database_url, run_id, callers
):
    VIEWER = callers["viewer"].headers
    pipeline, sft_job, rl_job = f"{run_id}-pipe", f"{run_id}-sft", f"{run_id}-rl"
    nan = _anomaly(run_id, "a1", sft_job, "sft", "nan_inf", 45, math.nan)
    kl = _anomaly(run_id, "a2", rl_job, "grpo", "kl_blowup", 12, 3.5)
    actions = [
        ActionRecord(
            action_id=f"{run_id}-x1",
            action="pause",
            anomaly_id=nan.anomaly_id,
            pipeline_id=pipeline,
            stage="sft",
            attempt=1,
            requested_at=AT,
        ),
        ActionRecord(action_id=f"{run_id}-x1", action="pause", applied_at=AT, applied_step=46),
    ]
    conn = await asyncpg.connect(database_url)
    try:
        await write_records(conn, [nan, kl], actions)
    finally:
        await conn.close()

    async with gateway(kafka_settings, database_url) as client:
        url = f"/v1/jobs/{sft_job}/anomalies"
        assert (await client.get(url)).status_code == 401
        response = await client.get(url, headers=VIEWER)
        assert response.status_code == 200
        [doc] = response.json()
        assert (doc["anomaly_id"], doc["step"], doc["value"]) == (nan.anomaly_id, 45, "NaN")
        assert doc["suggestions"] == ["Pause the run."]
        [action] = doc["actions"]
        assert (action["action"], action["status"], action["applied_step"]) == (
            "pause",
            "applied",
            46,
        )

        everything = await client.get(f"/v1/pipelines/{pipeline}/anomalies", headers=VIEWER)
        assert [d["anomaly_type"] for d in everything.json()] == ["kl_blowup", "nan_inf"]
        one_stage = await client.get(
            f"/v1/pipelines/{pipeline}/anomalies", params={"stage": "grpo"}, headers=VIEWER
        )
        assert [d["job_id"] for d in one_stage.json()] == [rl_job]
        none = await client.get(f"/v1/pipelines/{run_id}-nothing/anomalies", headers=VIEWER)
        assert none.status_code == 200 and none.json() == []
