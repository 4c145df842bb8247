"""Kill -9 the ingest service in the middle of batches, several times, while a producer sends
a known set of points: afterwards the table holds exactly that set, no more, no less."""

from __future__ import annotations

import asyncio
import random

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
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

POINTS_PER_JOB = 40_000
KILLS = 4


async def test_kill_9_mid_batches_leaves_exactly_the_sent_points(
    kafka_settings, producer, database_url, run_id, tmp_path
):
    jobs = [f"{run_id}-crash-{i}" for i in range(3)]
    envelopes = []
    expected = {}
    for i, job in enumerate(jobs):
        sent, points = messages(job, f"trainer-{i}", POINTS_PER_JOB, per_message=150)
        envelopes.extend(sent)
        expected.update(points)
    random.Random(5).shuffle(envelopes)  # jobs interleaved; each job's order is per partition
    total = len(expected)

    # Small batches, so that every kill lands with batches in flight; static membership, so
    # that each restart takes the partitions back at once.
    ingest = IngestProcess(
        kafka_settings,
        database_url,
        tmp_path / "ingest.log",
        POSTTRAIN_INGEST_BATCH_ROWS="1500",
        POSTTRAIN_INGEST_BATCH_AGE_S="0.05",
        POSTTRAIN_INGEST_INSTANCE_ID=f"{run_id}-crash",
        POSTTRAIN_INGEST_SESSION_TIMEOUT_MS="6000",
    )

    async def produce() -> None:
        # A steady stream, so that kills land while points are still arriving.
        for start in range(0, len(envelopes), 40):
            await producer.send_many(Topic.METRICS, envelopes[start : start + 40])
            await asyncio.sleep(0.01)
        # A producer that re-sends after a timeout: the same points, again.
        await producer.send_many(Topic.METRICS, envelopes[:100])

    conn = await asyncpg.connect(database_url)
    ingest.start()
    producing = asyncio.create_task(produce())
    try:
        for k in range(1, KILLS + 1):
            # Kill at a point the service has verifiably reached: some rows beyond the last kill.
            threshold = total * k // (KILLS + 2)
            await wait_for(
                lambda t=threshold: _at_least(conn, jobs, t),
                timeout=90,
                what=f"{threshold} rows before kill {k}\n{ingest.log_tail()}",
            )
            ingest.kill()
            ingest.start()
        await producing
        await wait_for(
            lambda: _at_least(conn, jobs, total),
            timeout=120,
            what=f"all {total} points\n{ingest.log_tail()}",
        )
        assert ingest.stop() == 0, ingest.log_tail()
        held = await stored(conn, jobs)
        assert len(held) == total == await count(conn, jobs)
        assert same_points(held, expected)
    finally:
        producing.cancel()
        ingest.kill()
        await conn.close()


async def _at_least(conn: asyncpg.Connection, jobs: list[str], n: int) -> bool:
    return await count(conn, jobs) >= n
