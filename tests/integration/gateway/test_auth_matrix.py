"""Who may call what: every route of the gateway is declared below with the role it needs, and
each is called with no token, a wrong token, a revoked token and each role's token.

The routes are read from ``app.routes``: a route added later without a line in ``MATRIX`` fails
this test, naming it.
"""

from __future__ import annotations

import asyncpg
import pytest
from fastapi.routing import APIRoute

from posttrain.events.topics import Topic
from posttrain.gateway.app import GatewayConfig, create_app
from posttrain.gateway.auth import Role, create_token, revoke_token
from posttrain.orchestrator.shell.service import expected_partitions
from posttrain.testing.invariants import read_topic
from posttrain.testing.scripted_agent import ScriptedAgent
from tests.integration.gateway.test_api import gateway
from tests.integration.orchestrator.test_orchestrator import running
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

PUBLIC = "public"  # anyone, no token
READ = "viewer"  # any valid token
SUBMIT = "submitter"  # a submitter or an admin
STEER = "owner"  # the submitter who submitted the pipeline, or an admin

MATRIX: dict[tuple[str, str], str] = {
    ("GET", "/"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    ("GET", "/static"): PUBLIC,  # the web page's scripts and style sheet (a mount)
    ("POST", "/v1/pipelines"): SUBMIT,
    ("GET", "/v1/pipelines"): READ,
    ("GET", "/v1/pipelines/{pipeline_id}"): READ,
    ("GET", "/v1/pipelines/{pipeline_id}/events"): READ,
    ("GET", "/v1/pipelines/{pipeline_id}/history"): READ,
    ("GET", "/v1/pipelines/{pipeline_id}/anomalies"): READ,
    ("POST", "/v1/pipelines/{pipeline_id}/resume"): STEER,
    ("POST", "/v1/pipelines/{pipeline_id}/cancel"): STEER,
    ("POST", "/v1/pipelines/{pipeline_id}/stages/{stage}/retry"): STEER,
    ("GET", "/v1/jobs/{job_id}/metrics"): READ,
    ("GET", "/v1/jobs/{job_id}/anomalies"): READ,
    ("GET", "/v1/jobs/{job_id}/series"): READ,
    ("GET", "/v1/agents"): READ,
}
# A mount is called at a file under it.
UNDER_MOUNT = {"/static": "/static/js/main.js"}

# Who gets in, per class: the others get 401 (no valid token) or 403 (a token without the right).
ALLOWED = {
    PUBLIC: {"none", "wrong", "revoked", "viewer", "submitter", "other", "admin"},
    READ: {"viewer", "submitter", "other", "admin"},
    SUBMIT: {"submitter", "other", "admin"},
    STEER: {"submitter", "admin"},
}


STAGE = {"name": "a", "task": "command", "params": {"argv": ["true"]}}


def _routes(app) -> list[tuple[str, str]]:
    found = []
    for route in app.routes:
        methods = getattr(route, "methods", None) or {"GET"}
        for method in sorted(methods - {"HEAD", "OPTIONS"}):
            found.append((method, route.path))
    return found


def test_every_route_is_declared_in_the_matrix(kafka_settings, database_url):
    app = create_app(GatewayConfig(kafka_settings, database_url))
    unclassified = [f"{m} {p}" for m, p in _routes(app) if (m, p) not in MATRIX]
    assert not unclassified, (
        f"routes without a line in MATRIX (declare who may call them): {unclassified}"
    )
    gone = [f"{m} {p}" for (m, p) in MATRIX if (m, p) not in _routes(app)]
    assert not gone, f"MATRIX names routes that no longer exist: {gone}"
    assert any(isinstance(r, APIRoute) for r in app.routes)


async def test_each_role_on_each_endpoint(kafka_settings, database_url, tmp_path, run_id, callers):
    conn = await asyncpg.connect(database_url)
    try:
        revoked = f"{run_id}-revoked"
        revoked_token = await create_token(conn, revoked, Role.ADMIN)
        await revoke_token(conn, revoked)
    finally:
        await conn.close()
    headers = {
        "none": {},
        "wrong": {"authorization": "Bearer not-a-token-anyone-made"},
        "revoked": {"authorization": f"Bearer {revoked_token}"},
        **{key: caller.headers for key, caller in callers.items()},
    }

    agent = ScriptedAgent(kafka_settings, "gpu-1", tmp_path / "record.jsonl")
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
        # Two pipelines of the submitter: one to read (ended, so its live stream ends), one to
        # steer.
        ids = {"read": f"{run_id}-read", "steer": f"{run_id}-steer"}
        for pid in ids.values():
            doc = {"pipeline_id": pid, "stages": [STAGE]}
            answer = await client.post("/v1/pipelines", json=doc, headers=headers["submitter"])
            assert answer.status_code == 202, answer.text

        async def ended(pid: str):
            answer = await client.get(f"/v1/pipelines/{pid}", headers=headers["viewer"])
            body = answer.json() if answer.status_code == 200 else {}
            return body if body.get("status") == "succeeded" else None

        for pid in ids.values():
            status = await wait_for(lambda pid=pid: ended(pid), timeout=60, what=pid)
            # The token's name is on the record as who submitted it.
            assert status["submitted_by"] == callers["submitter"].name

        def concrete(path: str, kind: str) -> str:
            pid = ids["steer"] if kind == STEER else ids["read"]
            path = UNDER_MOUNT.get(path, path)
            return path.format(pipeline_id=pid, stage="a", job_id=f"{run_id}-job")

        outcomes: dict[str, list[str]] = {"wrong answers": []}
        for (method, path), kind in MATRIX.items():
            for who, header in headers.items():
                body = (
                    {"json": {"stages": [STAGE]}}
                    if method == "POST" and path == "/v1/pipelines"
                    else {}
                )
                answer = await client.request(method, concrete(path, kind), headers=header, **body)
                code = answer.status_code
                if who in ALLOWED[kind]:
                    good = code < 400
                else:
                    anonymous = who in ("none", "wrong", "revoked")
                    good = code == (401 if anonymous else 403)
                if not good:
                    outcomes["wrong answers"].append(f"{who} {method} {path}: {code}")
        assert outcomes["wrong answers"] == []

        # The other submitter's refusal says why.
        other = await client.post(f"/v1/pipelines/{ids['steer']}/cancel", headers=headers["other"])
        assert other.status_code == 403 and "admin" in other.json()["detail"]

    # What the owner and the admin sent carries their names as requested_by, and nothing was
    # sent for anyone else.
    sent = await _commands(kafka_settings)
    steering = [
        (e.type, e.data.requested_by)
        for e in sent
        if e.key == ids["steer"] and e.type != "SubmitPipeline"
    ]
    expected = {callers["submitter"].name, callers["admin"].name}
    for kind in ("ResumePipeline", "CancelPipeline", "RetryStage"):
        assert {who for t, who in steering if t == kind} == expected, steering
    submitted = {e.data.submitted_by for e in sent if e.type == "SubmitPipeline"}
    assert submitted == {callers["submitter"].name, callers["other"].name, callers["admin"].name}


async def _commands(settings):
    """Every command on the namespace's pipeline.commands topic, up to its end offsets (each
    request was acknowledged by the broker before its answer)."""
    return [envelope for _, envelope in await read_topic(settings, Topic.PIPELINE_COMMANDS)]
