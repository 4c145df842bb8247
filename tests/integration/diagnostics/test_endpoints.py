"""The diagnostics stream answers /healthz and /metrics on its web port."""

from __future__ import annotations

import math
import uuid

import httpx
import pytest

from posttrain.events.kafka import EventProducer
from posttrain.events.topics import Topic
from tests.integration.diagnostics.helpers import StreamProcess
from tests.integration.diagnostics.test_stream import STARTUP_S, points, report
from tests.prometheus import samples
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _sample(text: str, name: str) -> float:
    return samples(text).get(name, 0.0)


async def test_health_and_counters_follow_the_stream(
    kafka_settings, producer: EventProducer, tmp_path
):
    stream = StreamProcess(kafka_settings, None, tmp_path)
    stream.start()
    base = f"http://127.0.0.1:{stream.port}"
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            # Starting (503) until the worker owns partitions and has restored its tables.

            async def healthy() -> bool:
                try:
                    answer = await http.get(f"{base}/healthz")
                except httpx.TransportError:
                    return False
                if answer.status_code == 503:
                    assert answer.json()["status"] == "starting"
                return answer.status_code == 200 and bool(answer.json()["partitions"])

            await wait_for(healthy, timeout=STARTUP_S, what="the stream's /healthz" + stream.tail())
            doc = (await http.get(f"{base}/healthz")).json()
            assert doc["ready"] is True and doc["rebalancing"] is False
            job = f"job-{uuid.uuid4().hex[:6]}"
            await producer.send(
                Topic.METRICS, report(job, points(1, 31, at={30: {"loss": math.nan}}), 0)
            )
            text = ""

            async def counted() -> bool:
                nonlocal text
                text = (await http.get(f"{base}/metrics")).text
                return _sample(text, "posttrain_diagnostics_actions_requested_total") >= 1

            # A cold worker recovers its tables before it reads: as long as a first anomaly.
            await wait_for(counted, timeout=STARTUP_S, what="the NaN's action in /metrics")
            assert _sample(text, "posttrain_diagnostics_messages_total") >= 1
            assert _sample(text, "posttrain_diagnostics_anomalies_total") >= 1
            assert "# TYPE posttrain_diagnostics_alerts_total counter" in text
            doc = (await http.get(f"{base}/healthz")).json()
            assert doc["status"] == "ok" and doc["processed_messages"] >= 1
    finally:
        stream.stop()
