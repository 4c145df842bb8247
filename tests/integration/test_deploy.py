"""deploy/prepare.py, the one-shot step the compose file and the Kubernetes Job run before the
services, prepares a real cluster: run as the container runs it, against the stack's broker (in a
namespace of its own) and a database of its own, it creates every declared topic with its
partitions and configs and applies every owner's migrations; a second run changes nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
import pytest
import pytest_asyncio

from posttrain.events.kafka import KafkaSettings
from posttrain.events.kafka.admin import check_topics
from posttrain.events.topics import TOPICS
from posttrain.service.migrate import migration_sets
from posttrain.testing.databases import scratch_database
from tests.conftest import RUN_ID
from tests.unit.deploy.manifests import ROOT

pytestmark = pytest.mark.integration

SCRIPT = ROOT / "deploy" / "prepare.py"


@pytest_asyncio.fixture
async def empty_database(base_database_url: str) -> AsyncIterator[str]:
    """A database of this test's own with no table at all, dropped at the end."""
    async with scratch_database(base_database_url, f"posttrain_{RUN_ID}_prepare") as url:
        yield url


async def _prepare(settings: KafkaSettings, database_url: str) -> list[str]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "POSTTRAIN_TOPIC_NAMESPACE": settings.namespace,
        "DATABASE_URL": database_url,
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


async def test_prepare_creates_the_topics_and_applies_the_migrations_once(
    base_kafka_settings: KafkaSettings, _namespaces: list[str], empty_database: str
):
    settings = replace(base_kafka_settings, namespace=f"{RUN_ID}-prepare-{uuid.uuid4().hex[:6]}")
    _namespaces.append(settings.namespace)
    assert len(await check_topics(settings)) == len(TOPICS)  # all missing before

    first = await _prepare(settings, empty_database)

    assert await check_topics(settings) == []  # every topic, its partitions and configs
    created = first[0].removeprefix("topics created: ").split(", ")
    assert sorted(created) == sorted(settings.topic(spec.topic) for spec in TOPICS.values())
    conn = await asyncpg.connect(empty_database)
    try:
        for owner in migration_sets():
            rows = await conn.fetchval(f"SELECT count(*) FROM {owner.ledger}")
            assert rows == len(owner.migrations), owner.owner
    finally:
        await conn.close()

    again = await _prepare(settings, empty_database)
    assert again == [
        "topics created: none (all present)",
        "migrations applied: none (up to date)",
    ]
