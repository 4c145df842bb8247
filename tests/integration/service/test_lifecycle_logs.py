"""Every service says when it starts (with its address and identity) and when it stops; the
gateway never writes a token into its log, access lines included."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import httpx
import pytest

from posttrain.gateway.auth import Role, create_token
from posttrain.testing import services
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _records(log: Path) -> list[dict]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def _said(log: Path, message: str) -> dict | None:
    return next((r for r in _records(log) if r.get("message", "").startswith(message)), None)


async def test_the_orchestrator_logs_its_start_and_its_stop(kafka_settings, database_url, tmp_path):
    log = tmp_path / "orchestrator.log"
    service = services.orchestrator(kafka_settings, log, database_url=database_url).start()
    try:
        started = await wait_for(
            lambda: _said(log, "orchestrator started"), timeout=60, what=service.tail()
        )
    finally:
        service.stop()
    assert started["namespace"] == kafka_settings.namespace
    assert started["http"] == f"127.0.0.1:{service.port}"
    assert started["group"] == kafka_settings.group("orchestrator")
    assert "posttrain:posttrain@" not in json.dumps(started)  # no password in the log
    stopped = _said(log, "orchestrator stopped")
    assert stopped is not None, service.tail()
    assert stopped["pid"] == started["pid"]


async def test_the_ingest_logs_its_start_and_its_stop(kafka_settings, database_url, tmp_path):
    log = tmp_path / "ingest.log"
    service = services.ingest(kafka_settings, database_url, log).start()
    try:
        started = await wait_for(
            lambda: _said(log, "ingest started"), timeout=60, what=service.tail()
        )
    finally:
        service.stop()
    assert started["namespace"] == kafka_settings.namespace
    assert started["http"] == f"127.0.0.1:{service.port}"
    stopped = _said(log, "ingest stopped")
    assert stopped is not None and stopped["namespace"] == kafka_settings.namespace


async def test_the_diagnostics_stream_logs_its_start_and_its_stop(kafka_settings, tmp_path):
    log = tmp_path / "diagnostics.log"
    service = services.diagnostics(kafka_settings, log).start()
    try:
        await service.wait_ready()
        text = log.read_text(errors="replace")
        (started,) = [line for line in text.splitlines() if "diagnostics stream started" in line]
    finally:
        service.stop()
    assert f"namespace {kafka_settings.namespace}" in started
    assert f"http 127.0.0.1:{service.port}" in started
    stopped = [
        line
        for line in log.read_text(errors="replace").splitlines()
        if "diagnostics stream stopped" in line
    ]
    assert len(stopped) == 1 and f"namespace {kafka_settings.namespace}" in stopped[0]


async def test_the_gateway_logs_its_start_and_its_stop_and_never_a_token(
    kafka_settings, database_url, tmp_path, run_id
):
    conn = await asyncpg.connect(database_url)
    try:
        token = await create_token(conn, f"{run_id}-logs", Role.VIEWER)
    finally:
        await conn.close()
    log = tmp_path / "gateway.log"
    service = services.gateway(kafka_settings, database_url, log, auth=True).start()
    try:
        await service.wait_ready()
        base = f"http://127.0.0.1:{service.port}"
        async with httpx.AsyncClient(base_url=base) as client:
            ok = await client.get("/v1/pipelines", headers={"authorization": f"Bearer {token}"})
            assert ok.status_code == 200
            refused = await client.get(
                "/v1/pipelines", headers={"authorization": "Bearer x" + token}
            )
            assert refused.status_code == 401
        await wait_for(
            lambda: "/v1/pipelines" in log.read_text(errors="replace"),
            timeout=10,
            what="the access log lines",
        )
    finally:
        service.stop()
    started = _said(log, "gateway started")
    assert started is not None, service.tail()
    assert started["address"] == f"127.0.0.1:{service.port}"
    assert started["namespace"] == kafka_settings.namespace and started["auth"] == "tokens"
    assert _said(log, "gateway stopped") is not None, service.tail()
    assert token not in log.read_text(errors="replace")


async def test_the_anomaly_recorder_logs_its_start_and_its_stop(
    kafka_settings, database_url, tmp_path
):
    log = tmp_path / "recorder.log"
    service = services.recorder(kafka_settings, database_url, log).start()
    try:
        started = await wait_for(
            lambda: _said(log, "recorder started"), timeout=60, what=service.tail()
        )
    finally:
        service.stop()
    assert started["namespace"] == kafka_settings.namespace
    assert started["http"] == f"127.0.0.1:{service.port}"
    assert "posttrain:posttrain@" not in json.dumps(started)  # no password in the log
    assert started["database"].endswith(database_url.rsplit("/", 1)[1])
    stopped = _said(log, "recorder stopped")
    assert stopped is not None and stopped["namespace"] == kafka_settings.namespace
