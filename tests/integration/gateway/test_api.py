"""The HTTP API on the real broker and database, with the orchestrator and its projection running
and a scripted agent standing in for GPU nodes."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from posttrain.events.kafka import KafkaSettings
from posttrain.events.topics import TOPICS, Topic
from posttrain.gateway.app import GatewayConfig, create_app
from posttrain.orchestrator.shell.service import expected_partitions
from posttrain.testing.databases import scratch_database
from posttrain.testing.scripted_agent import ScriptedAgent
from tests.integration.orchestrator.test_orchestrator import running
from tests.prometheus import samples
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def gateway(
    kafka_settings: KafkaSettings, database_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(GatewayConfig(kafka_settings, database_url, keepalive_s=1))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


async def _commands_sent(settings: KafkaSettings) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    await consumer.start()
    try:
        topic = settings.topic(Topic.PIPELINE_COMMANDS)
        tps = [TopicPartition(topic, p) for p in range(TOPICS[Topic.PIPELINE_COMMANDS].partitions)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


def _events(stream: str) -> list[dict[str, Any]]:
    """The ``status`` events of a server-sent event stream, in order."""
    out = []
    for block in stream.split("\n\n"):
        lines = block.splitlines()
        if "event: status" in lines:
            (data,) = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
            out.append(orjson.loads(data))
    return out


async def test_an_invalid_pipeline_gets_a_422_naming_each_stage_and_field(
    kafka_settings, database_url, callers
):
    OPERATOR = callers["submitter"].headers
    async with gateway(kafka_settings, database_url) as client:
        response = await client.post(
            "/v1/pipelines",
            json={
                "stages": [
                    {"name": "a", "task": "command", "depends_on": ["b"]},
                    {"name": "b", "task": "command", "depends_on": ["a"]},
                    {"name": "c", "task": "teleport"},
                    {"name": "d", "task": "command", "depends_on": ["ghost"]},
                ]
            },
            headers=OPERATOR,
        )
        assert response.status_code == 422
        errors = response.json()["errors"]
        where = {(e["stage"], e["field"]) for e in errors}
        assert ("c", "task") in where and ("d", "depends_on") in where
        assert any("a -> b -> a" in e["message"] or "b -> a -> b" in e["message"] for e in errors)

        malformed = await client.post(
            "/v1/pipelines",
            content=b"stages: [a\n",
            headers={**OPERATOR, "content-type": "application/yaml"},
        )
        assert malformed.status_code == 422
        assert malformed.json()["errors"][0]["field"] == "body"

        huge = await client.post(
            "/v1/pipelines", content=b"[" + b" " * (2 << 20) + b"]", headers=OPERATOR
        )
        assert huge.status_code == 413

        metrics = (await client.get("/metrics")).text
        assert samples(metrics)['posttrain_gateway_submissions_total{outcome="rejected"}'] == 2
    assert await _commands_sent(kafka_settings) == 0  # nothing reached the orchestrator


async def test_tokens_and_roles_are_enforced(kafka_settings, database_url, callers):
    VIEWER = callers["viewer"].headers
    async with gateway(kafka_settings, database_url) as client:
        missing = await client.get("/v1/pipelines")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        wrong = await client.get("/v1/pipelines", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert (await client.get("/v1/pipelines", headers=VIEWER)).status_code == 200
        stages = {"stages": [{"name": "a", "task": "command"}]}
        refused = await client.post("/v1/pipelines", json=stages, headers=VIEWER)
        assert refused.status_code == 403
        assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert await _commands_sent(kafka_settings) == 0


async def test_submit_follow_resume_and_read_a_pipeline(
    kafka_settings, database_url, tmp_path, run_id, callers
):
    OPERATOR, VIEWER = callers["submitter"].headers, callers["viewer"].headers
    agent = ScriptedAgent(kafka_settings, "gpu-1", tmp_path / "record.jsonl", fail={"b": [1]})
    yaml_pipeline = f"""
pipeline_id: {run_id}
name: over-http
stages:
  - {{name: a, task: command, params: {{argv: [a]}}}}
  - {{name: b, task: command, params: {{argv: [b]}}, depends_on: [a]}}
  - {{name: c, task: command, params: {{argv: [c]}}, depends_on: [b]}}
"""
    async with (
        running(kafka_settings, database_url, agent) as orchestrator,
        gateway(kafka_settings, database_url) as client,
    ):
        everything = list(range(expected_partitions()))
        await wait_for(
            lambda: orchestrator.partitions == everything and not orchestrator.stats.replaying,
            timeout=90,
            what="the orchestrator to own every partition",
        )
        submitted = await client.post(
            "/v1/pipelines",
            content=yaml_pipeline.encode(),
            headers={**OPERATOR, "content-type": "application/yaml"},
        )
        assert submitted.status_code == 202, submitted.text
        assert submitted.json() == {
            "pipeline_id": run_id,
            "layers": [["a"], ["b"], ["c"]],
            "status_url": f"/v1/pipelines/{run_id}",
        }

        # Live: statuses as they change, until the pipeline ends (b fails its one attempt).
        # (The in-process transport hands the body over once the stream has ended.)
        stream = await asyncio.wait_for(
            client.get(f"/v1/pipelines/{run_id}/events", headers=VIEWER), timeout=120
        )
        assert stream.headers["content-type"].startswith("text/event-stream")
        statuses = _events(stream.text)
        assert statuses[-1]["status"] == "failed"
        assert [s["status"] for s in statuses[-1]["stages"]] == ["succeeded", "failed", "pending"]
        assert len(statuses) >= 2 and statuses[0] != statuses[-1]

        assert (await client.post(f"/v1/pipelines/{run_id}/resume", headers=OPERATOR)).json() == {
            "accepted": "ResumePipeline",
            "pipeline_id": run_id,
        }

        async def succeeded():
            response = await client.get(f"/v1/pipelines/{run_id}", headers=VIEWER)
            return response.json() if response.json()["status"] == "succeeded" else None

        status = await wait_for(succeeded, timeout=60, what="the resumed pipeline to succeed")
        by_name = {s["name"]: s for s in status["stages"]}
        assert by_name["b"]["attempt"] == 2 and by_name["a"]["attempt"] == 1
        assert by_name["c"]["task_id"] == f"{run_id}:c:1"

        listed = await client.get("/v1/pipelines", params={"status": "succeeded"}, headers=VIEWER)
        assert run_id in [p["pipeline_uuid"] for p in listed.json()]

        retry = await client.post(f"/v1/pipelines/{run_id}/stages/zzz/retry", headers=OPERATOR)
        assert retry.status_code == 404 and "zzz" in retry.json()["detail"]
        unknown = await client.get("/v1/pipelines/no-such-pipeline", headers=VIEWER)
        assert unknown.status_code == 404


async def test_the_gateway_will_not_serve_without_tokens_unless_told(
    base_database_url, run_id, tmp_path
):
    def start(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "posttrain.gateway", "--port", "0"],
            env={"PATH": "/usr/bin:/bin", **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    # Plain-text tokens in the environment are no longer read: refused, not silently ignored.
    old_style = start({"POSTTRAIN_API_TOKENS": "abc:operator", "DATABASE_URL": "unused"})
    assert old_style.returncode == 2 and "posttrain token create" in old_style.stderr
    assert "abc" not in old_style.stderr

    prefix = f"posttrain_{run_id.replace('-', '_')}_notokens"
    async with scratch_database(base_database_url, prefix) as url:
        # A database without the gateway's tables gets them, then has no token.
        no_tokens = start({"DATABASE_URL": url})
        assert no_tokens.returncode == 2 and "posttrain token create" in no_tokens.stderr
        assert "--no-auth" in no_tokens.stderr
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM gateway_tokens") == 0
        finally:
            await conn.close()
        unreachable = start({"DATABASE_URL": "postgresql://a:b@127.0.0.1:1/none"})
        assert unreachable.returncode == 2 and "unreachable" in unreachable.stderr
