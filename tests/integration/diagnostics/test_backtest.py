"""``posttrain diagnose backtest`` over metrics stored by the real ingest service: the steps it
prints are what the stream's detectors and policy would raise and do."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import asyncpg
import orjson
import pytest

from posttrain.diagnostics.batch import DiagnosticService
from posttrain.events import Envelope
from posttrain.events.messages.metrics import MetricsReported
from posttrain.events.topics import Topic
from posttrain.metrics_ingest.queries import get_job_points
from posttrain.metrics_ingest.service import IngestService
from tests.unit.diagnostics.backtest_runs import (
    FIRST_EXPLOSION,
    NAN_STEP,
    RAISED_AFTER,
    SECOND_EXPLOSION,
    explosions_then_nan,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

POSTTRAIN = str(Path(sys.executable).with_name("posttrain"))


def reports(job: str, pipeline: str, stage: str, points) -> list[Envelope]:
    return [
        Envelope.create(
            MetricsReported(
                job_id=job,
                source="callback",
                first_seq=i,
                points=points[i : i + 20],
                pipeline_id=pipeline,
                stage=stage,
                attempt=1,
            ),
            key=job,
        )
        for i in range(0, len(points), 20)
    ]


def backtest(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "POSTTRAIN_DIAGNOSTICS_CONFIG"}
    env["DATABASE_URL"] = database_url
    return subprocess.run(
        [POSTTRAIN, "diagnose", "backtest", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def row(output: str, step: int, anomaly: str) -> str:
    """The printed line of the anomaly raised at ``step``."""
    [line] = [line for line in output.splitlines() if re.match(rf"\s+{step}\s+{anomaly}\s", line)]
    return line


async def test_backtest_prints_what_the_policy_would_have_done_step_by_step(
    kafka_settings, producer, database_url, run_id, tmp_path
):
    pipeline, job, other = f"{run_id}-pipe", f"{run_id}-sft", f"{run_id}-sft2"
    points = explosions_then_nan()
    healthy = explosions_then_nan()[: FIRST_EXPLOSION - 1]  # stops before its first explosion
    await producer.send_many(
        Topic.METRICS,
        reports(job, pipeline, "sft", points) + reports(other, pipeline, "sft2", healthy),
    )
    ingest = IngestService(kafka_settings, database_url)
    stop = asyncio.Event()
    ingest_task = asyncio.create_task(ingest.run(stop))
    conn = await asyncpg.connect(database_url)
    try:

        async def stored() -> bool:
            return len(await get_job_points(job, db=conn)) == len(points) and len(
                await get_job_points(other, db=conn)
            ) == len(healthy)

        await wait_for(stored, timeout=60, what="every point stored by the ingest service")
        async with DiagnosticService(database_url) as service:
            _, expected = await service.anomalies(job)
    finally:
        stop.set()
        await asyncio.wait_for(ingest_task, 30)
        await conn.close()

    # The defaults: what the running stream would do.
    result = await asyncio.to_thread(backtest, database_url, "--job", job)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(
        f"job {job} (pipeline {pipeline}, stage sft, attempt 1): {len(points)} points, "
        f"{len(expected)} anomalies\n"
    )
    assert "request adjust_learning_rate (x0.1)" in row(
        out, FIRST_EXPLOSION + RAISED_AFTER, "grad_explosion"
    )
    assert "nothing (within the rule's cooldown)" in row(
        out, SECOND_EXPLOSION + RAISED_AFTER, "grad_explosion"
    )
    nan = row(out, NAN_STEP, "nan_inf")
    assert "critical" in nan and " nan " in nan and "request pause" in nan
    assert "non-finite values at step 100: loss=nan" in nan
    assert "request adjust_learning_rate 1" in out.splitlines()[-1]
    assert "request pause 1" in out.splitlines()[-1]

    # Machine output: the same anomalies, with the ids the stream and the batch give them.
    as_json = await asyncio.to_thread(backtest, database_url, "--job", job, "--json")
    [doc] = orjson.loads(as_json.stdout)
    assert [s["anomaly"]["anomaly_id"] for s in doc["steps"]] == [a.id_for(job) for a in expected]
    by_step = {(s["step"], s["anomaly"]["anomaly_type"]): s for s in doc["steps"]}
    pause = by_step[(NAN_STEP, "nan_inf")]["action"]
    assert (pause["action"], pause["pipeline_id"], pause["stage"]) == ("pause", pipeline, "sft")

    # A policy file in the stream's format: dry run, no learning-rate cuts.
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "default:\n  actions:\n    dry_run: true\n    rules:\n"
        "      grad_explosion: null\n      nan_inf: {action: pause}\n"
    )
    tuned = await asyncio.to_thread(backtest, database_url, "--job", job, "--policy", str(policy))
    assert tuned.returncode == 0, tuned.stderr
    assert "nothing (no action rule for this anomaly type)" in row(
        tuned.stdout, FIRST_EXPLOSION + RAISED_AFTER, "grad_explosion"
    )
    assert "recommend pause" in row(tuned.stdout, NAN_STEP, "nan_inf")

    # A pipeline: each of its jobs with stored metrics.
    whole = await asyncio.to_thread(backtest, database_url, "--pipeline", pipeline, "--json")
    # In the order the ingest first saw them: the two jobs' reports travel on two partitions.
    assert sorted((d["job_id"], d["points"]) for d in orjson.loads(whole.stdout)) == [
        (job, len(points)),
        (other, len(healthy)),
    ]

    # Mistakes a person can act on.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"default": {"actions": {"rules": {"nan_inf": {"act": "x"}}}}}))
    refused = await asyncio.to_thread(backtest, database_url, "--job", job, "--policy", str(bad))
    assert refused.returncode == 2 and str(bad) in refused.stderr
    unknown = await asyncio.to_thread(backtest, database_url, "--job", f"{run_id}-nothing")
    assert unknown.returncode == 1 and "no stored metrics for job" in unknown.stderr
