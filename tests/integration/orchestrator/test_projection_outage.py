"""The read-model projection while PostgreSQL restarts: it waits for the server and then writes
what it read meanwhile, instead of ending the orchestrator.

Found by the resilience suite (tests/chaos): the projection's write raised
ConnectionRefusedError during a database restart, which ended the orchestrator's ``serve`` and
with it the process that runs every pipeline.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest

from posttrain.events import Envelope
from posttrain.events.messages import PipelineSubmitted, StageSpec
from posttrain.events.topics import Topic
from posttrain.orchestrator.shell.projection import Projection
from tests.integration.metrics_ingest.private_postgres import PrivatePostgres
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def submitted(pipeline_id: str) -> Envelope:
    data = PipelineSubmitted(
        pipeline_id=pipeline_id,
        name=pipeline_id,
        stages=[StageSpec(name="a", task="command")],
        layers=[["a"]],
    )
    return Envelope.create(data, key=pipeline_id)


async def _projected(dsn: str, pipeline_id: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        found = await conn.fetchval("SELECT 1 FROM pipelines WHERE pipeline_id = $1", pipeline_id)
        return bool(found)
    finally:
        await conn.close()


@pytest.fixture
def postgres():
    pg = PrivatePostgres()
    pg.init()
    pg.start()
    try:
        yield pg
    finally:
        pg.destroy()


async def test_the_projection_waits_out_a_database_restart_and_loses_nothing(
    kafka_settings, producer, postgres, run_id, caplog
):
    before, during = f"{run_id}-before", f"{run_id}-during"
    projection = Projection(kafka_settings, postgres.dsn, name=run_id)
    await projection.start()
    try:
        await producer.send(Topic.PIPELINE_EVENTS, submitted(before))

        async def written() -> bool:
            await projection.step(timeout_ms=100)
            return await _projected(postgres.dsn, before)

        await wait_for(written, timeout=30, what="the first pipeline projected")

        await asyncio.to_thread(postgres.stop)
        await producer.send(Topic.PIPELINE_EVENTS, submitted(during))
        caplog.set_level(logging.WARNING, logger="posttrain.orchestrator.shell.projection")

        async def steps() -> None:
            while during not in projection.states:
                await projection.step(timeout_ms=100)

        stepping = asyncio.create_task(steps())
        # It retries the write (and says so) rather than raising.
        await wait_for(
            lambda: stepping.done() or "database is unavailable" in caplog.text,
            timeout=30,
            what="the projection to meet the stopped database",
        )
        assert not stepping.done(), stepping.exception()

        await asyncio.to_thread(postgres.start)
        await asyncio.wait_for(stepping, 60)
        assert await _projected(postgres.dsn, during)
        assert await _projected(postgres.dsn, before)
    finally:
        await projection.stop()
