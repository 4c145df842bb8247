"""Agents' stage slots in the read model, on the real broker and database: the projection keeps
each agent's slots from its latest heartbeat, the client lists them, and `posttrain agents`
shows them."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from posttrain.events import Envelope
from posttrain.events.kafka import EventProducer
from posttrain.events.messages import AgentHeartbeat
from posttrain.events.topics import Topic
from posttrain.orchestrator.client import alist_agents
from posttrain.orchestrator.shell.projection import Projection
from posttrain.testing.services import kafka_env
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

POSTTRAIN = str(Path(sys.executable).with_name("posttrain"))


def _beat(agent_id: str, slots: int | None, running: list[str]) -> Envelope[AgentHeartbeat]:
    return Envelope.create(
        AgentHeartbeat(
            agent_id=agent_id,
            host="node",
            gpus=4,
            free_gpus=4 - len(running),
            running=running,
            slots=slots,
            interval_s=60.0,
            sent_at=time.time(),
        ),
        key=agent_id,
    )


async def test_agents_slots_are_projected_listed_and_shown(
    kafka_settings, producer: EventProducer, database_url, run_id
):
    limited, unlimited = f"{run_id}-limited", f"{run_id}-unlimited"
    await producer.send(Topic.AGENTS, _beat(limited, 2, [f"{run_id}:sft:1"]))
    await producer.send(Topic.AGENTS, _beat(unlimited, None, []))

    projection = Projection(kafka_settings, database_url, name=run_id)
    await projection.start()
    conn = await asyncpg.connect(database_url)
    try:

        async def slots_of(agent_id: str) -> object:
            await projection.step(timeout_ms=100)
            mine = [a for a in await alist_agents(db=conn) if a["agent_id"] == agent_id]
            return mine[0]["slots"] if mine else "absent"

        async def listed(agent_id: str, slots: int | None) -> bool:
            return await slots_of(agent_id) == slots

        await wait_for(lambda: listed(limited, 2), timeout=30, what="the agent's 2 slots")
        await wait_for(lambda: listed(unlimited, None), timeout=30, what="the unlimited agent")

        # The user's view: the slots column holds 2 for one, '-' (no limit) for the other.
        process = await asyncio.create_subprocess_exec(
            POSTTRAIN,
            "agents",
            env={**kafka_env(kafka_settings, database_url), "COLUMNS": "200"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err.decode()
        rows = {line.split()[0]: line.split() for line in out.decode().splitlines() if line}
        assert rows[limited][1:5] == ["yes", "3/4", "2", f"{run_id}:sft#1"], out.decode()
        assert rows[unlimited][1:5] == ["yes", "4/4", "-", "-"], out.decode()

        # A later heartbeat with more slots (the agent restarted with --slots 4) replaces it.
        await producer.send(Topic.AGENTS, _beat(limited, 4, []))
        await wait_for(lambda: listed(limited, 4), timeout=30, what="the agent's 4 slots")
    finally:
        await conn.close()
        await projection.stop()
