"""Two orchestrator instances project into one database at once, on the real PostgreSQL.

Every instance projects the whole agents topic, so both write the same agents' rows; their
batches list the agents in the order heartbeats arrived, which differs between instances. Found
by ``bench.fleet`` with the read model on: PostgreSQL broke the lock cycle with "deadlock
detected" and the orchestrator process ended.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from posttrain.events.messages import AgentHeartbeat
from posttrain.orchestrator.shell.projection import Projection, agent_row
from posttrain.orchestrator.shell.read_model import RowBatch, prepare_connection, write_batch

pytestmark = pytest.mark.integration

AGENTS = 400


def _rows(prefix: str, offset: int) -> list[tuple[object, ...]]:
    at = datetime.now(UTC)
    return [
        agent_row(
            AgentHeartbeat(
                agent_id=f"{prefix}-{i:04d}",
                host="node",
                gpus=8,
                free_gpus=8,
                running=[],
                interval_s=1.0,
                sent_at=at.timestamp(),
            ),
            at=at,
            partition=i % 3,
            offset=offset,
            silence_intervals=3.0,
        )
        for i in range(AGENTS)
    ]


async def test_two_projections_writing_the_same_agents_in_opposite_orders_both_commit(
    database_url: str,
):
    prefix = f"race-{uuid.uuid4().hex[:8]}"
    connections = [await asyncpg.connect(database_url) for _ in range(2)]
    for conn in connections:
        await prepare_connection(conn)
    try:
        for round_ in range(1, 6):
            rows = _rows(prefix, round_)
            forward = RowBatch(agents=rows)
            backward = RowBatch(agents=rows[::-1])
            results = await asyncio.gather(
                write_batch(connections[0], forward),
                write_batch(connections[1], backward),
                return_exceptions=True,
            )
            assert [r for r in results if isinstance(r, BaseException)] == [], round_
        stored = await connections[0].fetch(
            "SELECT agent_id, topic_offset FROM agents WHERE agent_id LIKE $1 ORDER BY agent_id",
            f"{prefix}-%",
        )
        assert [(r["agent_id"], r["topic_offset"]) for r in stored] == [
            (f"{prefix}-{i:04d}", 5) for i in range(AGENTS)
        ]
    finally:
        for conn in connections:
            await conn.close()


async def test_a_write_rolled_back_by_the_server_is_written_again(kafka_settings, database_url):
    """A batch whose transaction PostgreSQL rolled back (a deadlock or a serialization failure
    with another writer) is written again, whole; it does not end the orchestrator."""
    projection = Projection(kafka_settings, database_url)
    attempts: list[int] = []

    async def write() -> str:
        attempts.append(len(attempts) + 1)
        if len(attempts) < 3:
            raise asyncpg.exceptions.DeadlockDetectedError("deadlock detected")
        return "written"

    try:
        assert await projection._until_available(write) == "written"
    finally:
        await projection.stop()
    assert attempts == [1, 2, 3]
