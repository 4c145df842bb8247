"""Static group membership: an orchestrator killed with -9 and started again under the same
identity (``--instance-id``) takes its partitions back at once and the pipeline goes on, well
before the session timeout would have handed them to anyone (issue 15: under repeated kill -9 a
pipeline made no progress for 57 s)."""

from __future__ import annotations

import asyncio

import pytest

from posttrain.orchestrator.client import PipelineExecutor
from posttrain.testing.orchestrator import read_log, start_orchestrator
from posttrain.testing.scripted_agent import ScriptedAgent
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

SESSION_TIMEOUT_S = 45


def cmd(name, deps=()):
    return {"name": name, "task": "command", "params": {"argv": [name]}, "depends_on": list(deps)}


async def test_kill_9_and_restart_under_the_same_identity_resumes_well_before_the_session_timeout(
    kafka_settings, tmp_path, run_id
):
    release = asyncio.Event()
    agent = ScriptedAgent(
        kafka_settings, "gpu-1", tmp_path / "record.jsonl", heartbeat_s=0.5, holds={"b": release}
    )
    await agent.start()
    log = tmp_path / "orchestrator.log"
    same = (
        "--instance-id",
        "orchestrator-0",
        "--session-timeout-ms",
        str(SESSION_TIMEOUT_S * 1000),
    )
    process = start_orchestrator(kafka_settings, log, *same)
    restarted = None
    try:
        await wait_for(
            lambda: "owns partitions" in (log.read_text() if log.exists() else ""),
            timeout=60,
            what="the orchestrator to own its partitions",
        )
        await PipelineExecutor(run_id, settings=kafka_settings).aexecute(
            [cmd("a"), cmd("b", ["a"]), cmd("c", ["b"])]
        )
        await wait_for(
            lambda: any(r.stage == "b" for r in agent.received), timeout=60, what="b to be sent"
        )
        process.kill()
        release.set()  # b ends while no orchestrator runs: its report waits on the topic
        await wait_for(
            lambda: "b" not in {r.stage for r in agent.received if r.command_id in agent.running},
            timeout=30,
            what="b to end",
        )
        owned_before = log.read_text().count("owns partitions")
        loop = asyncio.get_running_loop()
        restarted_at = loop.time()
        restarted = start_orchestrator(kafka_settings, log, *same)

        async def succeeded():
            events = await read_log(kafka_settings)
            return any(e.type == "PipelineSucceeded" and e.key == run_id for e in events)

        # A dynamic member could not have its partitions before the old member's session
        # expired; the same static member has them as soon as it joins.
        await wait_for(
            succeeded,
            timeout=SESSION_TIMEOUT_S / 3,
            interval=0.2,
            what="the pipeline to succeed after the restart",
        )
        resumed_in = loop.time() - restarted_at
        assert log.read_text().count("owns partitions") > owned_before
    finally:
        for p in (process, restarted):
            if p is not None and p.running:
                p.stop()
        await agent.stop()
    assert resumed_in < SESSION_TIMEOUT_S / 3
    stages = [(r.stage, r.attempt) for r in agent.received]
    assert stages == [("a", 1), ("b", 1), ("c", 1)]
