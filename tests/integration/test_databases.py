"""posttrain.testing.databases on the real PostgreSQL server: a scratch database is created
beside the base one, migrated when asked, and dropped even while a session of ours is open in
it (a plain DROP after ending our own sessions, not ``WITH (FORCE)``)."""

from __future__ import annotations

import asyncpg
import pytest

from posttrain.service.migrate import pending_migrations
from posttrain.testing.databases import (
    create_database,
    database_name,
    drop_database,
    scratch_database,
)

pytestmark = pytest.mark.integration


async def _exists(base_url: str, name: str) -> bool:
    conn = await asyncpg.connect(base_url)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


async def test_a_scratch_database_is_migrated_and_dropped(base_database_url: str) -> None:
    async with scratch_database(base_database_url, "posttrain_scratch", migrate=True) as url:
        name = database_name(url)
        assert name.startswith("posttrain_scratch_")
        assert name != database_name(base_database_url)
        assert await _exists(base_database_url, name)
        assert await pending_migrations(url) == []
    assert not await _exists(base_database_url, name)


async def test_drop_ends_our_own_open_sessions(base_database_url: str) -> None:
    url = await create_database(base_database_url, "posttrain_scratch")
    lingering = await asyncpg.connect(url)
    try:
        assert await pending_migrations(url) != []  # created empty
        await drop_database(base_database_url, url, timeout_s=20)
        assert not await _exists(base_database_url, database_name(url))
        assert lingering.is_closed() or not await _usable(lingering)
    finally:
        await lingering.close()


async def _usable(conn: asyncpg.Connection) -> bool:
    try:
        await conn.fetchval("SELECT 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError):
        return False
    return True


async def test_the_base_database_is_never_dropped(base_database_url: str) -> None:
    with pytest.raises(ValueError, match="base database"):
        await drop_database(base_database_url, base_database_url)
    assert await _exists(base_database_url, database_name(base_database_url))
