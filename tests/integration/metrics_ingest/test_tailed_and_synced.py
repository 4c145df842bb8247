"""A metric file both tailed by an agent (onto Kafka, into the ingest) and synced by hand
(``posttrain metrics sync``) is stored once: both readers give its points the same identity."""

from __future__ import annotations

import asyncio
import math
import threading
from pathlib import Path

import asyncpg
import pytest

from posttrain.events.kafka import KafkaSettings
from posttrain.events.metricfile import create_metrics_file_writer
from posttrain.metrics_ingest import IngestService, get_metrics_range, sync_metrics_from_file
from posttrain.metrics_ingest.cli import main as metrics_cli
from posttrain.trainer_agent.reporting import create_training_callback
from posttrain.trainer_agent.tailer import MetricsFileTailer, follow
from tests.integration.metrics_ingest.helpers import count, stored
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _tail(path: Path, job: str, settings: KafkaSettings, spill: Path) -> tuple[str, int]:
    """Follow the file onto the metrics topic as the agent does for a stage (resuming from
    the saved offset); the source its points carry and how many it sent."""
    report = create_training_callback(
        job, pipeline_id="p-1", stage="train", attempt=1, settings=settings, spill_dir=spill
    )
    tailer = MetricsFileTailer(path)
    stop = threading.Event()
    stop.set()  # read what is there, then return
    try:
        sent = follow(tailer, report, stop, poll_s=0.05)
        assert report.flush(20)
    finally:
        report.close()
    return tailer.source, sent


async def _holds(conn: asyncpg.Connection, job: str, points: int) -> bool:
    return await count(conn, [job]) == points


async def test_a_file_tailed_and_synced_is_stored_once(
    kafka_settings, database_url, run_id, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("DATABASE_URL", database_url)  # what the CLI connects to
    job = f"{run_id}-both"
    # Trainer names (seed's, TRL's) and a NaN: both readers map and keep them alike.
    with create_metrics_file_writer(job, tmp_path) as write:
        for s in range(200):
            loss = math.nan if s == 13 else 1.0 / (1 + s)
            write(step=s, loss=loss, grad_norm_actor=2.0, reward=0.1 * s, my_metric=s)
    path = tmp_path / f"{job}_metrics.jsonl"
    spill = tmp_path / "spill"

    service = IngestService(kafka_settings, database_url)
    await service.start()
    conn = await asyncpg.connect(database_url)
    try:
        # Tailed first: the agent's points reach the table through Kafka and the ingest.
        # (The blocking parts run in threads: the ingest shares this event loop.)
        source, sent = await asyncio.to_thread(_tail, path, job, kafka_settings, spill)
        assert sent == 200 and source.startswith("file:")
        await wait_for(lambda: _holds(conn, job, 200), timeout=30, what="the tailed points")

        # Then synced by hand: every point is already there.
        assert await asyncio.to_thread(metrics_cli, ["sync", str(path)]) == 0
        assert f"0 new, 200 already stored ({source})" in capsys.readouterr().out

        # Lines appended later, synced first this time, then tailed: the ingest sees only
        # points it holds already.
        with create_metrics_file_writer(job, tmp_path) as write:
            for s in range(200, 250):
                write(step=s, loss=1.0 / (1 + s), grad_norm_actor=2.0, reward=0.1 * s)
        synced = await sync_metrics_from_file(job, path, db=conn)
        assert (synced.source, synced.points, synced.inserted) == (source, 250, 50)
        duplicates_before = service.stats.rows_duplicate
        again = await asyncio.to_thread(_tail, path, job, kafka_settings, spill)
        assert again == (source, 50)
        await wait_for(
            lambda: service.stats.rows_duplicate >= duplicates_before + 50,
            timeout=30,
            what="the re-tailed points reach the ingest",
        )

        held = await stored(conn, [job])  # fails on a point stored twice
        assert len(held) == 250 == await count(conn, [job])
        assert {src for _, src, _ in held} == {source}
        assert sorted(seq for _, _, seq in held) == list(range(250))
        series = await get_metrics_range(
            job, ["loss", "grad_norm", "reward_mean", "custom.my_metric"], db=conn
        )
        assert series.steps == list(range(250))
        assert math.isnan(series.values["loss"][13]) and series.values["loss"][14] == 1.0 / 15
        assert set(series.values["grad_norm"]) == {2.0}
        assert series.values["reward_mean"][100] == pytest.approx(10.0)
        assert series.values["custom.my_metric"][:200] == list(range(200))
    finally:
        await conn.close()
        await service.stop()
