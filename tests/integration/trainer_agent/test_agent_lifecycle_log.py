"""An agent says when it starts (with its identity and address) and when it stops, with or
without its HTTP endpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.testing import services
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _records(log: Path) -> list[dict]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _said(log: Path, message: str) -> dict | None:
    return next((r for r in _records(log) if r.get("message", "").startswith(message)), None)


async def test_an_agent_without_http_logs_its_start_and_its_stop(kafka_settings, run_id, tmp_path):
    log = tmp_path / "agent.log"
    name = f"{run_id}-quiet"
    agent = services.agent(
        kafka_settings, log, name=name, work_dir=tmp_path / "work", extra=["--no-http"]
    )
    agent.start()
    try:
        started = await wait_for(
            lambda: _said(log, "agent started"), timeout=60, what=f"the start line\n{agent.tail()}"
        )
        assert started["agent_id"] == name
        assert started["http"] is None
        assert started["namespace"] == kafka_settings.namespace
        assert started["work_dir"] == str(tmp_path / "work")
    finally:
        agent.stop()
    stopped = _said(log, "agent stopped")
    assert stopped is not None, agent.tail()
    assert stopped["agent_id"] == name
