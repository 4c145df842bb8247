"""Restart PostgreSQL during ingestion: no point is lost, consumption pauses while the server is
away, the memory of the ingest process stays bounded, and ingestion catches up afterwards."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from posttrain.events.topics import Topic
from tests.integration.metrics_ingest.helpers import (
    IngestProcess,
    count,
    messages,
    same_points,
    stored,
)
from tests.integration.metrics_ingest.private_postgres import PrivatePostgres
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

MAX_PENDING_ROWS = 20_000
MiB = 1024 * 1024


async def test_postgres_restart_loses_nothing_and_memory_stays_bounded(
    kafka_settings, producer, run_id, tmp_path
):
    pg = PrivatePostgres()
    pg.init()
    pg.start()
    job = f"{run_id}-pgrestart"
    envelopes, expected = messages(job, "trainer", 220_000, per_message=250)
    ingest = IngestProcess(
        kafka_settings,
        pg.dsn,
        tmp_path / "ingest.log",
        POSTTRAIN_INGEST_BATCH_ROWS="5000",
        POSTTRAIN_INGEST_BATCH_AGE_S="0.1",
        POSTTRAIN_INGEST_MAX_PENDING_ROWS=str(MAX_PENDING_ROWS),
    )
    ingest.start()
    rss_peak = 0

    async def produce() -> None:
        # A steady stream (about 100 MB on the wire in all), sampling the service's memory.
        nonlocal rss_peak
        for start in range(0, len(envelopes), 20):
            await producer.send_many(Topic.METRICS, envelopes[start : start + 20])
            rss_peak = max(rss_peak, ingest.rss_bytes())
            await asyncio.sleep(0.005)

    conn = await _connect(pg.dsn)
    producing = asyncio.create_task(produce())
    try:
        # Stop the server in the middle of ingestion: batches are being written.
        await wait_for(
            lambda: _at_least(conn, job, 20_000),
            timeout=60,
            what=f"first points\n{ingest.log_tail()}",
        )
        rss_running = ingest.rss_bytes()
        await conn.close()
        pg.stop()
        metrics = await wait_for(
            lambda: _prometheus_when(ingest, paused=1, database_up=0),
            timeout=60,
            what=f"the service to pause\n{ingest.log_tail()}",
        )
        assert metrics["posttrain_ingest_pending_rows"] < 2 * MAX_PENDING_ROWS
        assert metrics["posttrain_ingest_write_failures_total"] >= 1
        await producing  # everything is sent while the server is away
        # Bounded: paused, the process does not grow with what keeps waiting in Kafka.
        for _ in range(20):
            rss_peak = max(rss_peak, ingest.rss_bytes())
            await asyncio.sleep(0.05)
        assert rss_peak - rss_running < 120 * MiB, (rss_running, rss_peak)

        pg.start()
        conn = await _connect(pg.dsn)
        await wait_for(
            lambda: _at_least(conn, job, len(expected)),
            timeout=120,
            what=f"all points after the restart\n{ingest.log_tail()}",
        )
        assert same_points(await stored(conn, [job]), expected)
        assert await count(conn, [job]) == len(expected)
        await wait_for(
            lambda: _prometheus_when(ingest, paused=0, database_up=1),
            timeout=30,
            what="the service to resume",
        )
    finally:
        producing.cancel()
        if not conn.is_closed():
            await conn.close()
        ingest.stop()
        pg.destroy()


async def _connect(dsn: str) -> asyncpg.Connection:
    return await wait_for(lambda: _try_connect(dsn), timeout=30, what="the private server")


async def _try_connect(dsn: str) -> asyncpg.Connection | None:
    try:
        return await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError):
        return None


async def _at_least(conn: asyncpg.Connection, job: str, n: int) -> bool:
    try:
        return await count(conn, [job]) >= n
    except asyncpg.UndefinedTableError:
        return False  # the service has not applied the migrations yet


async def _prometheus_when(ingest: IngestProcess, **wanted: float) -> dict[str, float] | None:
    metrics = await ingest.prometheus()
    if all(metrics.get(f"posttrain_ingest_{k}") == v for k, v in wanted.items()):
        return metrics
    return None
