"""The read side over HTTP, on the real broker and database: a pipeline's history, the agents,
metric series, live updates pushed by LISTEN/NOTIFY, and idempotent submissions."""

from __future__ import annotations

import asyncio
import itertools
import math
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest

from posttrain.diagnostics.core.records import AnomalyRecord
from posttrain.diagnostics.store import write_records
from posttrain.events.messages.metrics import MetricPoint
from posttrain.metrics_ingest.core.wire import rows_from_points
from posttrain.metrics_ingest.store import MetricsWriter, prepare_connection
from posttrain.orchestrator.client import alist_agents, get_pipeline_history, list_agents
from posttrain.orchestrator.shell.projection import Projection
from posttrain.orchestrator.shell.service import expected_partitions
from posttrain.testing.scripted_agent import ScriptedAgent
from tests.integration.gateway.test_api import _commands_sent, gateway
from tests.integration.orchestrator.test_orchestrator import running
from tests.prometheus import samples
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

T0 = 1_780_000_000.0


def _cmd(name: str, after: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "task": "command", "params": {"argv": [name]}, **extra} | (
        {"depends_on": after} if after else {}
    )


def _sse(body: str) -> list[tuple[str, dict[str, Any], str | None]]:
    """(event, data, id) of each event of a server-sent event stream, in order."""
    out = []
    for block in body.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
        )
        if "event" in fields:
            out.append((fields["event"], orjson.loads(fields["data"]), fields.get("id")))
    return out


async def _owning_everything(orchestrator) -> None:
    everything = list(range(expected_partitions()))
    await wait_for(
        lambda: orchestrator.partitions == everything and not orchestrator.stats.replaying,
        timeout=90,
        what="the orchestrator to own every partition",
    )


async def test_history_pages_through_decisions_and_retries_and_agents_show_what_they_run(
    kafka_settings, database_url, tmp_path, run_id, callers
):
    OPERATOR, VIEWER = callers["submitter"].headers, callers["viewer"].headers
    agent_id = f"{run_id}-gpu"
    hold = asyncio.Event()
    agent = ScriptedAgent(
        kafka_settings,
        agent_id,
        tmp_path / "record.jsonl",
        fail={"b": [1]},
        holds={"c": hold},
    )
    stages = [
        _cmd("a"),
        _cmd("b", ["a"], retries={"max_attempts": 2, "backoff_s": 0.1}),
        _cmd("c", ["b"]),
    ]
    async with (
        running(kafka_settings, database_url, agent) as orchestrator,
        gateway(kafka_settings, database_url) as client,
    ):
        await _owning_everything(orchestrator)
        submitted = await client.post(
            "/v1/pipelines",
            json={"pipeline_id": run_id, "name": "history", "stages": stages},
            headers=OPERATOR,
        )
        assert submitted.status_code == 202, submitted.text

        # While c is held, the agent is alive and runs it.
        async def running_c():
            listed = (await client.get("/v1/agents", headers=VIEWER)).json()["agents"]
            mine = [a for a in listed if a["agent_id"] == agent_id]
            running = mine[0]["running"] if mine else []
            return mine[0] if [r["stage"] for r in running] == ["c"] else None

        seen = await wait_for(running_c, timeout=60, what="the agent to run c")
        assert seen["alive"] is True and seen["gpus"] == 8 and seen["gpus_free"] == 8
        assert seen["labels"] == {} and seen["slots"] is None
        assert seen["running"] == [
            {"pipeline_uuid": run_id, "stage": "c", "attempt": 1, "job_uuid": f"{run_id}.c"}
        ]
        hold.set()

        async def succeeded():
            doc = (await client.get(f"/v1/pipelines/{run_id}", headers=VIEWER)).json()
            return doc["status"] == "succeeded"

        await wait_for(succeeded, timeout=60, what="the pipeline to succeed")

        whole = (await client.get(f"/v1/pipelines/{run_id}/history", headers=VIEWER)).json()
        events = whole["events"]
        assert whole["pipeline_uuid"] == run_id and whole["next_after"] is None
        assert [e["seq"] for e in events] == sorted({e["seq"] for e in events})
        types = [e["type"] for e in events]
        assert types[0] == "PipelineSubmitted" and types[-1] == "PipelineSucceeded"
        assert "TickClock" not in types
        failed = next(e for e in events if e["type"] == "StageFailed")
        assert (failed["stage"], failed["attempt"]) == ("b", 1)
        assert failed["summary"] == "b attempt 1 failed (error): scripted failure of b attempt 1"
        assert failed["data"]["kind"] == "error"
        retry = next(e for e in events if e["type"] == "StageRetryScheduled")
        assert (retry["stage"], retry["attempt"]) == ("b", 2)
        assert retry["summary"].startswith("b will retry as attempt 2 from ")
        dispatched = [(e["stage"], e["attempt"]) for e in events if e["type"] == "StageDispatched"]
        assert dispatched == [("a", 1), ("b", 1), ("b", 2), ("c", 1)]

        # Pages of 3 give the same entries, in order.
        paged, after = [], None
        while True:
            params = {"limit": 3} | ({"after": after} if after is not None else {})
            page = (
                await client.get(f"/v1/pipelines/{run_id}/history", params=params, headers=VIEWER)
            ).json()
            assert len(page["events"]) <= 3
            paged += page["events"]
            after = page["next_after"]
            if after is None:
                break
        assert paged == events
        # The SDK's plain twins read the same (from code with no event loop of its own).
        sync = await asyncio.to_thread(
            get_pipeline_history, run_id, after=2, limit=2, database_url=database_url
        )
        expected = [e["seq"] for e in events if e["seq"] > 2][:2]
        assert [e["seq"] for e in sync["events"]] == expected
        assert sync["next_after"] == expected[-1]
        assert agent_id in [
            a["agent_id"] for a in await asyncio.to_thread(list_agents, database_url=database_url)
        ]

        unknown = await client.get("/v1/pipelines/nope/history", headers=VIEWER)
        assert unknown.status_code == 404
        bad = await client.get(
            f"/v1/pipelines/{run_id}/history", params={"limit": 0}, headers=VIEWER
        )
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "limit"]
        assert (await client.get(f"/v1/pipelines/{run_id}/history")).status_code == 401

    # A second projection (no saved offsets) reads the whole log and the agents topic again:
    # the history is the same rows, the ended pipeline is not kept in its memory, and the agent,
    # which said it stops as it went, is listed but not alive.
    conn = await asyncpg.connect(database_url)
    try:
        count = "SELECT count(*) FROM pipeline_history WHERE pipeline_id = $1"
        assert await conn.fetchval(count, run_id) == len(events)
        again = Projection(kafka_settings, database_url, name=f"{run_id}-again")
        await again.start()
        try:

            async def caught_up():
                await again.step(timeout_ms=100)
                mine = [a for a in await alist_agents(db=conn) if a["agent_id"] == agent_id]
                return await again.behind() == 0 and not mine[0]["alive"]

            await wait_for(caught_up, timeout=60, what="a second projection to catch up")
            assert again.stats.events > 0 and run_id not in again.states
        finally:
            await again.stop()
        assert await conn.fetchval(count, run_id) == len(events)
        [mine] = [a for a in await alist_agents(db=conn) if a["agent_id"] == agent_id]
        assert mine["running"] == [] and mine["last_heartbeat_at"] is not None
    finally:
        await conn.close()


async def _store_points(database_url: str, job: str, pipeline: str | None, steps, loss) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await prepare_connection(conn)
        points = [
            (i, MetricPoint(step=step, timestamp=T0 + step, loss=loss(step), reward_mean=step / 10))
            for i, step in enumerate(steps)
        ]
        report = rows_from_points(
            job, "trainer", points, pipeline_id=pipeline, stage="b", attempt=1
        )
        await MetricsWriter().write(conn, [report])
    finally:
        await conn.close()


async def test_a_live_stream_is_pushed_status_history_metrics_and_anomalies(
    kafka_settings, database_url, tmp_path, run_id, callers
):
    OPERATOR, VIEWER = callers["submitter"].headers, callers["viewer"].headers
    hold = asyncio.Event()
    agent = ScriptedAgent(kafka_settings, f"{run_id}-gpu", tmp_path / "r.jsonl", holds={"b": hold})
    job = f"{run_id}.b"
    async with (
        running(kafka_settings, database_url, agent) as orchestrator,
        gateway(kafka_settings, database_url) as client,
    ):
        await _owning_everything(orchestrator)
        body = {"pipeline_id": run_id, "name": "live", "stages": [_cmd("a"), _cmd("b", ["a"])]}
        assert (await client.post("/v1/pipelines", json=body, headers=OPERATOR)).status_code == 202

        async def b_running():
            response = await client.get(f"/v1/pipelines/{run_id}", headers=VIEWER)
            if response.status_code != 200:
                return False
            return {s["name"]: s["status"] for s in response.json()["stages"]}["b"] == "running"

        await wait_for(b_running, timeout=60, what="b to run")
        # From the start of the history; the in-process transport returns the body at the end.
        follow = asyncio.create_task(
            client.get(f"/v1/pipelines/{run_id}/events", params={"after": 0}, headers=VIEWER)
        )

        async def streams_open():
            text = (await client.get("/metrics")).text
            return samples(text).get("posttrain_gateway_live_streams") == 1

        await wait_for(streams_open, timeout=30, what="the stream to be open")
        await _store_points(database_url, job, run_id, range(1, 6), lambda step: 1.0)
        conn = await asyncpg.connect(database_url)
        try:
            anomaly = AnomalyRecord(
                anomaly_id=f"{run_id}-an",
                job_id=job,
                anomaly_type="loss_spike",
                severity="warning",
                step=4,
                value=9.0,
                message="loss spike at step 4",
                detected_at=datetime.now(UTC),
                event_id=f"{run_id}-ev",
                pipeline_id=run_id,
                stage="b",
                attempt=1,
            )
            await write_records(conn, [anomaly], [])
        finally:
            await conn.close()
        hold.set()
        stream = await asyncio.wait_for(follow, timeout=60)

    events = _sse(stream.text)
    kinds = [kind for kind, _, _ in events]
    assert kinds[-1] == "status" and events[-1][1]["status"] == "succeeded"
    history = [(data, id_) for kind, data, id_ in events if kind == "history"]
    seqs = [data["seq"] for data, _ in history]
    assert seqs[0] == 1 and seqs == sorted(set(seqs))  # each entry once, in order
    assert all(id_ == str(data["seq"]) for data, id_ in history)
    assert history[0][0]["type"] == "PipelineSubmitted"
    assert history[-1][0]["type"] == "PipelineSucceeded"
    assert {"kind": "metrics", "job_uuid": job, "step": 5} in [
        {"kind": kind, **data} for kind, data, _ in events if kind == "metrics"
    ]
    [pushed] = [data for kind, data, _ in events if kind == "anomaly"]
    assert (pushed["anomaly_id"], pushed["job_uuid"], pushed["step"]) == (f"{run_id}-an", job, 4)
    # Status documents only when the status changed, each one different from the last.
    statuses = [data for kind, data, _ in events if kind == "status"]
    assert all(a != b for a, b in itertools.pairwise(statuses))


async def test_a_series_is_downsampled_in_buckets_with_non_finite_values_named(
    kafka_settings, database_url, run_id, callers
):
    VIEWER = callers["viewer"].headers
    job = f"{run_id}-series"

    def loss(step: int) -> float:
        return {7: math.nan, 8: math.inf}.get(step, float(step))

    await _store_points(database_url, job, None, range(1, 101), loss)
    async with gateway(kafka_settings, database_url) as client:
        url = f"/v1/jobs/{job}/series"
        whole = (
            await client.get(url, params={"fields": "loss,reward_mean"}, headers=VIEWER)
        ).json()
        assert whole["job_uuid"] == job and whole["fields"] == ["loss", "reward_mean"]
        assert whole["step"] == list(range(1, 101))
        assert whole["values"]["loss"][5:9] == [6.0, None, None, 9.0]
        assert whole["values"]["reward_mean"][:2] == [0.1, 0.2]
        assert whole["non_finite"] == {"loss": [7, 8], "reward_mean": []}

        ten = (
            await client.get(url, params={"fields": "loss", "points": 10}, headers=VIEWER)
        ).json()
        assert ten["step"] == list(range(1, 101, 10))
        # Steps 1..10: the mean of the finite values (NaN and Inf left out, and named).
        assert ten["values"]["loss"][0] == pytest.approx((55 - 7 - 8) / 8)
        assert ten["values"]["loss"][9] == pytest.approx(sum(range(91, 101)) / 10)
        assert ten["non_finite"]["loss"] == [7, 8]

        part = (
            await client.get(
                url,
                params={"fields": "loss", "points": 2, "step_from": 41, "step_to": 60},
                headers=VIEWER,
            )
        ).json()
        assert part["step"] == [41, 51] and part["non_finite"] == {"loss": []}

        unknown = await client.get(url, params={"fields": "loss,lossy"}, headers=VIEWER)
        assert unknown.status_code == 422
        [error] = unknown.json()["detail"]
        assert error["loc"] == ["query", "fields"] and "lossy" in error["msg"]
        nothing = (await client.get("/v1/jobs/nope/series", headers=VIEWER)).json()
        assert nothing["step"] == [] and nothing["values"] == {"loss": []}


async def test_an_idempotency_key_makes_a_repeated_submission_harmless_across_gateways(
    kafka_settings, database_url, run_id, callers
):
    OPERATOR = callers["submitter"].headers
    body = {"name": "once", "stages": [_cmd("a")]}  # no pipeline_id: the gateway makes one
    key = {"idempotency-key": f"{run_id}-k1"}
    async with (
        gateway(kafka_settings, database_url) as one,
        gateway(kafka_settings, database_url) as two,
    ):
        first = await one.post("/v1/pipelines", json=body, headers={**OPERATOR, **key})
        assert first.status_code == 202
        again = await two.post("/v1/pipelines", json=body, headers={**OPERATOR, **key})
        assert (again.status_code, again.json()) == (202, first.json())
        assert again.headers["idempotent-replayed"] == "true"
        other = await two.post(
            "/v1/pipelines", json={**body, "name": "twice"}, headers={**OPERATOR, **key}
        )
        assert other.status_code == 409 and "another request body" in other.json()["detail"]

        # A refused document is answered the same way again.
        bad = {"stages": [{"name": "x", "task": "teleport"}]}
        bad_key = {"idempotency-key": f"{run_id}-k2"}
        refused = await one.post("/v1/pipelines", json=bad, headers={**OPERATOR, **bad_key})
        replay = await two.post("/v1/pipelines", json=bad, headers={**OPERATOR, **bad_key})
        assert refused.status_code == replay.status_code == 422
        assert refused.json() == replay.json()

        fresh = await one.post("/v1/pipelines", json=body, headers=OPERATOR)
        assert fresh.json()["pipeline_id"] != first.json()["pipeline_id"]
        too_long = await one.post(
            "/v1/pipelines", json=body, headers={**OPERATOR, "idempotency-key": "k" * 201}
        )
        assert too_long.status_code == 422
        assert too_long.json()["detail"][0]["loc"] == ["header", "idempotency-key"]
    assert await _commands_sent(kafka_settings) == 2  # the first submission and the fresh one


async def test_live_updates_survive_the_listening_connection_being_cut(
    kafka_settings, database_url, tmp_path, run_id, callers
):
    OPERATOR, VIEWER = callers["submitter"].headers, callers["viewer"].headers
    hold = asyncio.Event()
    agent = ScriptedAgent(kafka_settings, f"{run_id}-gpu", tmp_path / "r.jsonl", holds={"a": hold})
    async with (
        running(kafka_settings, database_url, agent) as orchestrator,
        gateway(kafka_settings, database_url) as client,
    ):
        await _owning_everything(orchestrator)
        body = {"pipeline_id": run_id, "name": "cut", "stages": [_cmd("a")]}
        assert (await client.post("/v1/pipelines", json=body, headers=OPERATOR)).status_code == 202
        follow = asyncio.create_task(client.get(f"/v1/pipelines/{run_id}/events", headers=VIEWER))

        async def metric(name: str, value: float) -> bool:
            return samples((await client.get("/metrics")).text).get(name) == value

        await wait_for(lambda: metric("posttrain_gateway_live_streams", 1), what="the stream")
        listening = (
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND query LIKE 'LISTEN%'"
        )
        conn = await asyncpg.connect(database_url)
        try:
            cut = {row["pid"] for row in await conn.fetch(listening)}
            assert cut, "no listening backend found"
            for pid in cut:  # as a PostgreSQL restart or a proxy would cut it
                await conn.execute("SELECT pg_terminate_backend($1)", pid)

            async def listening_again():
                now = {row["pid"] for row in await conn.fetch(listening)}
                return now and not now & cut

            await wait_for(listening_again, timeout=30, what="a new listening connection")
        finally:
            await conn.close()
        await wait_for(lambda: metric("posttrain_gateway_live_listening", 1), what="listening")
        hold.set()  # the pipeline ends after the cut: the stream must still hear it
        stream = await asyncio.wait_for(follow, timeout=60)
    statuses = [data["status"] for kind, data, _ in _sse(stream.text) if kind == "status"]
    assert statuses[-1] == "succeeded"


async def test_values_postgresql_cannot_take_are_422s_not_server_errors(
    kafka_settings, database_url, callers
):
    VIEWER = callers["viewer"].headers
    async with gateway(kafka_settings, database_url) as client:
        nul = await client.get("/v1/pipelines/a%00b/history", headers=VIEWER)
        assert nul.status_code == 422 and "cannot be read" in nul.json()["detail"]
        big = await client.get("/v1/pipelines/p/history", params={"after": 2**31}, headers=VIEWER)
        assert big.status_code == 422 and big.json()["detail"][0]["loc"] == ["query", "after"]
        steps = await client.get("/v1/jobs/j/series", params={"step_from": 2**63}, headers=VIEWER)
        assert steps.status_code == 422
        assert steps.json()["detail"][0]["loc"] == ["query", "step_from"]
