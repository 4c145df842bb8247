"""The read side over HTTP, on the real broker and database: a pipeline's history, the agents,
metric series, live updates pushed by LISTEN/NOTIFY, and idempotent submissions."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson
import pytest

from posttrain.orchestrator.api import alist_agents
from posttrain.orchestrator.shell.projection import Projection
from posttrain.orchestrator.shell.service import expected_partitions
from posttrain.testing.scripted_agent import ScriptedAgent
from tests.integration.gateway.test_api import OPERATOR, VIEWER, gateway
from tests.integration.orchestrator.test_orchestrator import running
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
    kafka_settings, database_url, tmp_path, run_id
):
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

        unknown = await client.get("/v1/pipelines/nope/history", headers=VIEWER)
        assert unknown.status_code == 404
        bad = await client.get(
            f"/v1/pipelines/{run_id}/history", params={"limit": 0}, headers=VIEWER
        )
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "limit"]
        assert (await client.get(f"/v1/pipelines/{run_id}/history")).status_code == 401

    # A restarted projection reads the whole log and the agents topic again: the history is
    # the same rows, and the agent, which said it stops as it went, is listed but not alive.
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
                state = again.states.get(run_id)
                return state is not None and state.status == "succeeded" and not mine[0]["alive"]

            await wait_for(caught_up, timeout=60, what="a second projection to catch up")
        finally:
            await again.stop()
        assert await conn.fetchval(count, run_id) == len(events)
        [mine] = [a for a in await alist_agents(db=conn) if a["agent_id"] == agent_id]
        assert mine["running"] == [] and mine["last_heartbeat_at"] is not None
    finally:
        await conn.close()
