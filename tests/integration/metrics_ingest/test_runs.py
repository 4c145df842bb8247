"""A second run under an existing job id is a new run of that job: the queries read the latest
run by default and any run when asked, never a mix of two runs."""

from __future__ import annotations

import subprocess
import sys

import asyncpg
import pytest

from posttrain.events import Envelope
from posttrain.events.messages.metrics import MetricPoint, MetricsReported
from posttrain.events.topics import Topic
from posttrain.metrics_ingest import (
    IngestService,
    get_downsampled_metrics,
    get_job_points,
    get_latest_metrics,
    get_metric_runs,
    get_metrics_range,
)
from posttrain.testing import services
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

SCRIPT = """
from posttrain import create_training_callback
callback = create_training_callback(job_uuid={job!r})
for step in range(1, {steps} + 1):
    callback(step=step, loss={loss} / step)
"""


def run_script(job: str, steps: int, loss: float, env: dict[str, str]) -> None:
    code = SCRIPT.format(job=job, steps=steps, loss=loss)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


async def test_a_script_run_twice_under_one_job_id_is_two_runs(
    kafka_settings, database_url, run_id, tmp_path
):
    job = f"{run_id}-twice"
    service = IngestService(kafka_settings, database_url)
    await service.start()
    db = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    env = services.kafka_env(kafka_settings, database_url)
    env["POSTTRAIN_SPILL_DIR"] = str(tmp_path / "spill")
    try:
        run_script(job, 30, 1.0, env)
        await wait_for(
            lambda: service.stats.rows_inserted >= 30, timeout=30, what="first run stored"
        )
        run_script(job, 20, 5.0, env)
        await wait_for(
            lambda: service.stats.rows_inserted >= 50, timeout=30, what="second run stored"
        )

        runs = await get_metric_runs(job, db=db)
        assert [(r.run, r.points, len(r.sources)) for r in runs] == [(1, 30, 1), (2, 20, 1)]
        # By default: the latest run only, though both reported steps 1..20.
        latest = await get_latest_metrics(job, limit=100, db=db)
        assert sorted(m.step for m in latest) == list(range(1, 21))
        assert {round(m.loss * m.step, 6) for m in latest} == {5.0}
        # Any run on request, and all of them together only when asked.
        first = await get_latest_metrics(job, limit=100, run=1, db=db)
        assert {round(m.loss * m.step, 6) for m in first} == {1.0} and len(first) == 30
        assert len(await get_job_points(job, run="all", db=db)) == 50
        series = await get_metrics_range(job, ["loss"], db=db)
        assert series.steps == list(range(1, 21))
        down = await get_downsampled_metrics(job, "loss", buckets=5, run=1, db=db)
        assert down.source_points == 30
        with pytest.raises(ValueError, match="run must be a run number"):
            await get_latest_metrics(job, run=0, db=db)
    finally:
        await db.close()
        await service.stop()


def reported(job: str, source: str, attempt: int | None, steps: range) -> Envelope[MetricsReported]:
    points = [MetricPoint(step=s, timestamp=1.78e9 + s, loss=float(s)) for s in steps]
    message = MetricsReported(
        job_id=job,
        source=source,
        first_seq=0,
        points=points,
        pipeline_id="p" if attempt is not None else None,
        stage="train" if attempt is not None else None,
        attempt=attempt,
    )
    return Envelope.create(message, key=job)


async def test_under_the_agent_a_run_is_the_attempt_whatever_its_sources(
    kafka_settings, producer, database_url, run_id
):
    job = f"{run_id}-attempts"
    service = IngestService(kafka_settings, database_url)
    await service.start()
    db = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        # Attempt 1 reports through its callback and its tailed metrics file: one run.
        await producer.send_many(
            Topic.METRICS,
            [
                reported(job, "callback-a", 1, range(0, 10)),
                reported(job, "file:train.jsonl", 1, range(10, 15)),
            ],
        )
        await wait_for(lambda: service.stats.rows_inserted >= 15, timeout=30, what="attempt 1")
        # The retry is a new run.
        await producer.send_many(Topic.METRICS, [reported(job, "callback-b", 2, range(5, 12))])
        await wait_for(lambda: service.stats.rows_inserted >= 22, timeout=30, what="attempt 2")
        runs = await get_metric_runs(job, db=db)
        assert [(r.run, r.points, sorted(r.sources)) for r in runs] == [
            (1, 15, ["callback-a", "file:train.jsonl"]),
            (2, 7, ["callback-b"]),
        ]
        assert sorted(m.step for m in await get_job_points(job, db=db)) == list(range(5, 12))
    finally:
        await db.close()
        await service.stop()
