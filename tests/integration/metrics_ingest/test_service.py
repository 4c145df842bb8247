"""The running service seen from outside: flushing on demand, /healthz, /metrics, /flush."""

from __future__ import annotations

import asyncio
import urllib.request

import asyncpg
import orjson
import pytest

from posttrain.events.topics import Topic
from posttrain.metrics_ingest import flush_metrics
from posttrain.metrics_ingest.core.batching import preset
from posttrain.metrics_ingest.endpoints import routes
from posttrain.metrics_ingest.service import IngestService
from posttrain.service.http import EndpointServer
from tests.integration.metrics_ingest.helpers import count, messages
from tests.prometheus import samples
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


async def test_flush_metrics_writes_what_the_seed_policy_would_hold_for_30_seconds(
    kafka_settings, producer, database_url, run_id
):
    job = f"{run_id}-flush"
    envelopes, expected = messages(job, "trainer", 60, per_message=20)
    # The seed's policy: 100 rows or 30 s. 60 points sit in the buffer...
    service = IngestService(kafka_settings, database_url, policy=preset("seed"))
    await service.start()
    conn = await asyncpg.connect(database_url)
    try:
        await producer.send_many(Topic.METRICS, envelopes)
        await wait_for(lambda: service.stats.messages >= 3, timeout=30, what="3 messages read")
        assert await count(conn, [job]) == 0
        # ... until flushed on demand.
        assert await flush_metrics() == 60
        assert await count(conn, [job]) == len(expected)
    finally:
        await conn.close()
        await service.stop()


async def test_health_metrics_and_flush_over_http(kafka_settings, producer, database_url, run_id):
    job = f"{run_id}-http"
    envelopes, _ = messages(job, "trainer", 500, per_message=100)
    service = IngestService(kafka_settings, database_url, policy=preset("seed"))
    endpoints = EndpointServer(routes(service), port=0)
    await service.start()
    port = await endpoints.start()
    base = f"http://127.0.0.1:{port}"
    try:
        await producer.send_many(Topic.METRICS, envelopes)
        # 500 rows: five seed-sized batches written, the rest waits for age or a flush.
        await wait_for(lambda: service.stats.rows_inserted >= 500, timeout=30, what="500 rows")

        status, body = await _http("GET", f"{base}/healthz")
        health = orjson.loads(body)
        assert status == 200 and health["status"] == "ok" and health["database_up"] is True

        status, body = await _http("GET", f"{base}/metrics")
        got = samples(body.decode())
        assert status == 200
        assert got["posttrain_ingest_rows_inserted_total"] >= 500
        assert got['posttrain_ingest_batch_rows_bucket{le="100.0"}'] >= 5
        assert "posttrain_ingest_consumer_lag_messages_total" in got
        assert got["posttrain_ingest_dead_letters_total"] == 0
        assert got["posttrain_ingest_rows_per_second"] > 0

        status, body = await _http("POST", f"{base}/flush")
        assert status == 200 and "rows_inserted" in orjson.loads(body)
        assert (await _http("GET", f"{base}/flush"))[0] == 405
        assert (await _http("GET", f"{base}/nothing"))[0] == 404
    finally:
        await endpoints.stop()
        await service.stop()


async def _http(method: str, url: str) -> tuple[int, bytes]:
    def call() -> tuple[int, bytes]:
        request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    return await asyncio.to_thread(call)
