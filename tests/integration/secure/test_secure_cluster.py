"""A pipeline on a broker that requires SASL (SCRAM-SHA-512) over TLS, each service as its own
principal under the ACLs of ``posttrain.events.access``; clients without the right are refused.

The broker is started by ``posttrain stack up --secure kafka`` in a state directory of this
module's own on free ports (tests/integration/secure/broker.py); the shared plaintext stack is
only used for PostgreSQL (this run's own database).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

from posttrain.events.access import Principal
from posttrain.events.topics import Topic
from posttrain.orchestrator.client import aget_pipeline_status
from posttrain.sdk import aget_latest_metrics
from posttrain.testing import services
from tests.integration.secure.broker import POSTTRAIN, SecureBroker, free_port_pair
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    namespace = f"secure-{uuid.uuid4().hex[:8]}"
    made = SecureBroker(tmp_path_factory.mktemp("secure-stack"), free_port_pair(), namespace)
    try:
        made.up()
        yield made
    finally:
        made.down()


def _service(
    name: str, broker: SecureBroker, database_url: str, logs: Path
) -> services.ServiceProcess:
    """The service ``name`` with its own principal's settings (password file, CA)."""
    settings = broker.settings(Principal(name))
    if name == Principal.ORCHESTRATOR:
        return services.orchestrator(settings, logs / f"{name}.log", database_url=database_url)
    if name == Principal.INGEST:
        return services.ingest(settings, database_url, logs / f"{name}.log")
    if name == Principal.AGENT:
        return services.agent(
            settings,
            logs / f"{name}.log",
            name="secure-1",
            work_dir=logs / "agent",
            cwd=REPO,
            extra=["--heartbeat", "1", "--stage-threads", "1", "--no-zygote"],
        )
    if name == Principal.DIAGNOSTICS:
        return services.diagnostics(settings, logs / f"{name}.log")
    if name == Principal.RECORDER:
        return services.recorder(settings, database_url, logs / f"{name}.log")
    assert name == Principal.GATEWAY
    return services.gateway(settings, database_url, logs / f"{name}.log")


@contextlib.asynccontextmanager
async def running(
    names: list[Principal], broker: SecureBroker, database_url: str, logs: Path
) -> AsyncIterator[dict[str, services.ServiceProcess]]:
    """The named services, started together; yielded once each says it is ready (its consumers
    own their partitions and fetch, as its principal)."""
    started = {name.value: _service(name, broker, database_url, logs) for name in names}
    try:
        for service in started.values():
            service.start()
        await asyncio.gather(*(s.wait_ready() for s in started.values()))
        yield started
    finally:
        services.stop_all(started.values())


def _all_healthy(platform: dict[str, services.ServiceProcess]) -> None:
    for service in platform.values():
        health = service.health()
        assert health is not None and health[0] == 200, (
            f"{service.name}: {health}\n{service.tail()}"
        )


@pytest.fixture
async def platform(
    broker: SecureBroker, database_url: str, tmp_path: Path
) -> AsyncIterator[dict[str, services.ServiceProcess]]:
    """What a pipeline needs: the orchestrator, the ingest, one agent and the gateway."""
    names = [Principal.ORCHESTRATOR, Principal.INGEST, Principal.AGENT, Principal.GATEWAY]
    async with running(names, broker, database_url, tmp_path) as started:
        yield started


async def test_a_pipeline_runs_with_a_principal_per_service(
    broker: SecureBroker, platform: dict[str, services.ServiceProcess], database_url: str
) -> None:
    pipeline = f"secure-{uuid.uuid4().hex[:8]}"
    stages = [
        {
            "name": "report",
            "task": "python",
            "params": {
                "entrypoint": "tests.integration.secure.stages:report_points",
                "kwargs": {"points": 5},
            },
        },
        {
            "name": "after",
            "task": "command",
            "params": {"argv": ["true"]},
            "depends_on": ["report"],
        },
    ]
    # Submitted through the gateway, whose principal may write pipeline commands and no more.
    gateway = f"http://127.0.0.1:{platform['gateway'].port}"
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
        response = await client.post(
            "/v1/pipelines", json={"pipeline_id": pipeline, "stages": stages}
        )
    assert response.status_code == 202, response.text

    async def ended() -> dict | None:
        status = await aget_pipeline_status(pipeline, database_url)
        return status if status and status["status"] in ("succeeded", "failed") else None

    status = await wait_for(ended, timeout=60, interval=0.2, what="the pipeline to end")
    logs = "\n".join(f"--- {s.name}\n{s.tail()}" for s in platform.values())
    assert status["status"] == "succeeded", f"{status}\n{logs}"
    report = next(s for s in status["stages"] if s["name"] == "report")
    assert report["agent_id"] == "secure-1" and report["outputs"]["points"] == 5

    # The stage's points went from the stage process (the agent's principal) through the
    # broker to the ingest (its own) and into PostgreSQL.
    async def stored() -> list:
        points = await aget_latest_metrics(report["job_uuid"], 10, database_url)
        return points if len(points) == 5 else []

    points = await wait_for(stored, timeout=30, interval=0.2, what="the 5 points stored")
    assert sorted(p.step for p in points) == [1, 2, 3, 4, 5]
    # The command line as the gateway's principal: `status` also asks the broker whether an
    # orchestrator holds the partitions and how far the log goes (describe rights only).
    env = services.kafka_env(broker.settings(Principal.GATEWAY), database_url)
    process = await asyncio.create_subprocess_exec(
        POSTTRAIN,
        "status",
        pipeline,
        env={**env, "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    assert out.decode().splitlines()[0] == f"pipeline {pipeline} ({pipeline}): succeeded"
    assert "stale" not in out.decode() and "not authorized" not in err.decode()

    # Every service is still serving: none was refused anything it does on the way.
    _all_healthy(platform)


async def test_the_diagnostics_stream_and_recorder_serve_under_their_principals(
    broker: SecureBroker, database_url: str, tmp_path: Path
) -> None:
    # The stream is a Faust app (its own changelog topics, created under its principal's
    # prefix); the recorder a plain consumer group.
    names = [Principal.DIAGNOSTICS, Principal.RECORDER]
    async with running(names, broker, database_url, tmp_path) as started:
        _all_healthy(started)


async def test_a_client_without_the_right_is_refused(broker: SecureBroker) -> None:
    agent = broker.settings(Principal.AGENT)
    events = agent.topic(Topic.PIPELINE_EVENTS)

    # The agent's principal writes its reports, never the pipelines' event log.
    producer = AIOKafkaProducer(**agent.client_options(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(agent.topic(Topic.STAGE_REPORTS), b"{}", key=b"p")
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait(events, b"{}", key=b"p")
    finally:
        await producer.stop()

    # Nor does it read the event log.
    consumer = AIOKafkaConsumer(events, **agent.client_options(), auto_offset_reset="earliest")
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await consumer.start()
            await consumer.getmany(timeout_ms=5000)
    finally:
        await consumer.stop()

    # A wrong password does not connect at all.
    wrong = dataclasses.replace(agent, sasl_password="not-the-password")
    refused = AIOKafkaProducer(**wrong.client_options())
    try:
        with pytest.raises(KafkaConnectionError):
            await refused.start()
    finally:
        await refused.stop()

    # Nor does a client that does not speak TLS and SASL.
    plaintext = dataclasses.replace(agent, security_protocol="PLAINTEXT")
    unsecured = AIOKafkaProducer(**plaintext.client_options(), request_timeout_ms=5000)
    try:
        with pytest.raises((KafkaConnectionError, asyncio.TimeoutError)):
            await asyncio.wait_for(unsecured.start(), 15)
    finally:
        await unsecured.stop()
