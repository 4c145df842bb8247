"""Placement respects an agent's stage slots, on the real broker with a real trainer agent: an
agent started with ``--slots 2`` gets a fan-out of seven stages as its slots free up, each
RunStage once, none rejected (issue 15: it used to get all seven, reject five, and be sent
them again every second)."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from posttrain.events import decode
from posttrain.events.topics import TOPICS, Topic
from posttrain.orchestrator.client import PipelineExecutor
from posttrain.orchestrator.shell.service import Orchestrator
from posttrain.testing.orchestrator import read_log
from posttrain.trainer_agent.agent import Agent, AgentConfig
from posttrain.trainer_agent.launcher import SpawnLauncher
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


async def read_commands(settings):
    """Every committed message on the agent commands topic."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        topic = settings.topic(Topic.AGENT_COMMANDS)
        tps = [TopicPartition(topic, p) for p in range(TOPICS[Topic.AGENT_COMMANDS].partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out = []
        while any([await consumer.position(tp) < end for tp, end in ends.items()]):
            for records in (await consumer.getmany(timeout_ms=300)).values():
                out.extend(decode(r.value, r.headers) for r in records)
        return out
    finally:
        await consumer.stop()


async def test_an_agent_with_two_slots_gets_each_of_seven_ready_stages_once(
    kafka_settings, tmp_path, run_id
):
    launcher = SpawnLauncher()
    agent = Agent(
        AgentConfig(
            agent_id="two-slots",
            work_dir=str(tmp_path / "agent"),
            slots=2,
            heartbeat_s=0.5,
            poll_s=0.1,
            cwd=str(tmp_path),
        ),
        kafka_settings,
        launcher,
    )
    orchestrator = Orchestrator(kafka_settings, tick_interval_s=0.2, session_timeout_ms=2000)
    stop = asyncio.Event()
    agent_task = asyncio.create_task(agent.run())
    await orchestrator.start()
    loop = asyncio.create_task(orchestrator.run(stop))
    try:
        await wait_for(agent.ready.is_set, timeout=60, what="the agent to be ready")
        fan = [
            {
                "name": f"f{i}",
                "task": "command",
                "params": {"argv": [sys.executable, "-c", "import time; time.sleep(0.3)"]},
            }
            for i in range(1, 8)
        ]
        await PipelineExecutor(run_id, settings=kafka_settings).aexecute(fan)

        async def finished():
            events = [e for e in await read_log(kafka_settings) if e.key == run_id]
            done = [e for e in events if e.type in ("PipelineSucceeded", "PipelineFailed")]
            return events if done else None

        events = await wait_for(finished, timeout=90, interval=0.5, what="the pipeline to end")
    finally:
        stop.set()
        await asyncio.gather(loop, return_exceptions=True)
        await orchestrator.stop()
        agent.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(agent_task, 30)
        launcher.close()

    assert events[-1].type == "PipelineSucceeded", [e.type for e in events]
    runs = [c.data for c in await read_commands(kafka_settings) if c.type == "RunStage"]
    assert sorted(r.stage for r in runs) == [f"f{i}" for i in range(1, 8)]
    assert all(r.attempt == 1 and r.agent_id == "two-slots" for r in runs)
    assert [e for e in events if e.type == "StageRejected"] == []
    # never more than two at once, as the orchestrator recorded it
    running: set[str] = set()
    most = 0
    for e in events:
        if e.type == "StageDispatched":
            running.add(e.data.stage)
        elif e.type in ("StageSucceeded", "StageFailed"):
            running.discard(e.data.stage)
        most = max(most, len(running))
    assert most == 2
