"""The one migrator (posttrain.service.migrate) on the real PostgreSQL server: each service
applies only its own tables, owners migrating at once do not collide, and a database migrated
before the metric and read-model tables moved to their owners adopts them without running
them again. Each test works in a fresh database of its own, dropped at the end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from posttrain.events.kafka import KafkaSettings
from posttrain.orchestrator.client import aget_pipeline_status
from posttrain.orchestrator.shell.projection import Projection
from posttrain.service.migrate import (
    PLATFORM,
    PLATFORM_LEDGER,
    all_migrations,
    apply_migrations,
    migration_sets,
    pending_migrations,
)
from posttrain.testing.databases import scratch_database

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def fresh_database(base_database_url: str) -> AsyncIterator[str]:
    async with scratch_database(base_database_url, "posttrain_migrate") as url:
        yield url


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        )
    finally:
        await conn.close()
    return {row["tablename"] for row in rows}


def test_each_owner_of_tables_declares_its_own_migrations() -> None:
    owners = {s.owner: s.ledger for s in migration_sets()}
    assert owners == {
        PLATFORM: PLATFORM_LEDGER,
        "diagnostics": "diagnostics_migrations",
        "gateway": "gateway_migrations",
        "metrics_ingest": "metrics_ingest_migrations",
        "orchestrator": "orchestrator_migrations",
    }
    assert [m.id for m in migration_sets("metrics_ingest")[0].migrations] == [
        "metrics_ingest/0001_metrics",
        "metrics_ingest/0002_metric_runs",
    ]
    assert all_migrations()[0].id == "0001_foundation"


async def test_a_service_applies_only_its_own_tables(fresh_database: str) -> None:
    applied = await apply_migrations(fresh_database, owner="metrics_ingest")

    assert applied == ["metrics_ingest/0001_metrics", "metrics_ingest/0002_metric_runs"]
    tables = await _tables(fresh_database)
    assert {"metrics", "metric_jobs", "metric_sources", "metrics_ingest_migrations"} <= tables
    # Nobody else's: no read model, no anomalies, not even the platform's ledger.
    assert not tables & {"pipelines", "agents", "anomalies", PLATFORM_LEDGER}
    assert await pending_migrations(fresh_database, owner="metrics_ingest") == []
    assert "orchestrator/0001_pipelines" in await pending_migrations(fresh_database)


async def test_owners_migrating_at_once_apply_each_migration_once(fresh_database: str) -> None:
    results = await asyncio.gather(
        apply_migrations(fresh_database, owner="orchestrator"),
        apply_migrations(fresh_database, owner="metrics_ingest"),
        apply_migrations(fresh_database),
    )

    every = [m.id for m in all_migrations()]
    assert sorted(i for r in results for i in r) == sorted(every)
    assert await pending_migrations(fresh_database) == []
    assert await apply_migrations(fresh_database) == []


async def _migrate_as_before_the_move(url: str) -> list[str]:
    """The layout the platform's migrator left: the moved migrations applied in their old order
    and recorded in schema_migrations under their old ids; the ids of the moved ones."""
    moved = sorted((m for m in all_migrations() if m.was is not None), key=lambda m: m.was or ())
    await apply_migrations(url, owner=PLATFORM)
    conn = await asyncpg.connect(url)
    try:
        for migration in moved:
            assert migration.was is not None
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    f"INSERT INTO {PLATFORM_LEDGER} (version, name) VALUES ($1, $2)",
                    *migration.was,
                )
        await conn.execute(
            "INSERT INTO metric_jobs (job_id) VALUES ('kept'); "
            "INSERT INTO pipelines (pipeline_id, name, status, version) "
            "VALUES ('p-kept', 'kept', 'running', 1)"
        )
    finally:
        await conn.close()
    return [m.id for m in moved]


async def test_a_database_migrated_before_the_move_adopts_the_moved_tables(
    fresh_database: str,
) -> None:
    moved = await _migrate_as_before_the_move(fresh_database)
    assert moved == [
        "metrics_ingest/0001_metrics",
        "orchestrator/0001_pipelines",
        "orchestrator/0002_history_and_agents",
        "metrics_ingest/0002_metric_runs",
        "orchestrator/0003_stage_dependencies",
    ]

    # Running a moved file again would fail (its tables exist): adopting records it instead.
    applied = await apply_migrations(fresh_database)

    assert set(moved) <= set(applied)
    assert await pending_migrations(fresh_database) == []
    conn = await asyncpg.connect(fresh_database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM metric_jobs WHERE job_id = 'kept'") == 1
        assert await conn.fetchval("SELECT status FROM pipelines WHERE name = 'kept'") == (
            "running"
        )
        ledger = await conn.fetch("SELECT version, name FROM orchestrator_migrations")
        assert {(r["version"], r["name"]) for r in ledger} == {
            (1, "pipelines"),
            (2, "history_and_agents"),
            (3, "stage_dependencies"),
            (4, "projection_state"),  # after the move: applied, not adopted
            (5, "agent_slots"),
        }
    finally:
        await conn.close()


async def test_the_orchestrator_projection_creates_its_own_read_model(
    fresh_database: str, kafka_settings: KafkaSettings
) -> None:
    projection = Projection(kafka_settings, fresh_database)
    await projection.start()
    try:
        # What the gateway reads is there, empty, on a database nobody else migrated.
        assert await aget_pipeline_status("nobody", fresh_database) is None
    finally:
        await projection.stop()

    tables = await _tables(fresh_database)
    assert {"pipelines", "pipeline_stages", "pipeline_history", "agents"} <= tables
    assert not tables & {"metrics", "anomalies", "idempotency_keys"}
    assert await pending_migrations(fresh_database, owner="orchestrator") == []
