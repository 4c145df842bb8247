"""``flush_metrics()`` run in a fresh process (the seed's troubleshooting one-liner) makes a
running ingest process write what it holds, and says so when it cannot."""

from __future__ import annotations

import subprocess
import sys

import asyncpg
import pytest

from posttrain.events.topics import Topic
from posttrain.testing import services
from tests.integration.metrics_ingest.helpers import count, messages

pytestmark = pytest.mark.integration


def one_liner(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


async def test_flush_metrics_from_another_process_writes_what_the_ingest_holds(
    kafka_settings, producer, database_url, run_id, tmp_path
):
    job = f"{run_id}-flush-cli"
    envelopes, expected = messages(job, "trainer", 60, per_message=20)
    # The seed's policy (100 rows or 30 s): the 60 points sit in the ingest's memory.
    ingest = services.ingest(
        kafka_settings, database_url, tmp_path / "ingest.log", extra=["--preset", "seed"]
    ).start()
    conn = await asyncpg.connect(database_url)
    try:
        await ingest.wait_ready()
        await producer.send_many(Topic.METRICS, envelopes)
        env = services.kafka_env(kafka_settings, database_url)
        done = one_liner("from posttrain import flush_metrics; print(flush_metrics())", env)
        assert done.returncode == 0, done.stderr
        assert int(done.stdout.split()[-1]) == len(expected)
        # Written when the call returned, not 30 s later.
        assert await count(conn, [job]) == len(expected)
        # Nothing left: a second flush writes nothing, and says so.
        again = one_liner("from posttrain import flush_metrics; print(flush_metrics())", env)
        assert again.returncode == 0, again.stderr
        assert again.stdout.split()[-1] == "0"
    finally:
        await conn.close()
        ingest.stop()


async def test_flush_metrics_with_no_ingest_running_says_the_points_wait_in_kafka(
    kafka_settings, producer, run_id
):
    envelopes, _ = messages(f"{run_id}-orphan", "trainer", 5, per_message=5)
    await producer.send_many(Topic.METRICS, envelopes)
    done = one_liner(
        "from posttrain import flush_metrics\nflush_metrics(timeout_s=5)",
        services.kafka_env(kafka_settings),
    )
    assert done.returncode == 1
    assert "FlushFailed: no metrics ingest is running" in done.stderr
    assert "the points stay in Kafka until one starts" in done.stderr
