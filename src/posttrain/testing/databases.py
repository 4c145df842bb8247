"""A scratch database on the stack's PostgreSQL server: created under a fresh name, migrated
when asked, and dropped cleanly, for the test suite and the benchmarks alike."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

DROP_TIMEOUT_S = 60.0


def with_database(url: str, database: str) -> str:
    """``url`` naming ``database`` instead of its own (same server, role and options)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def database_name(url: str) -> str:
    """The database a URL names."""
    return urlsplit(url).path.lstrip("/")


async def create_database(base_url: str, prefix: str, *, migrate: bool = False) -> str:
    """The URL of a new database ``<prefix>_<random>`` beside ``base_url``'s, empty or, with
    ``migrate``, with every owner's migrations applied. ``base_url``'s own is never touched."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(base_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_database(base_url, name)
    if migrate:
        from posttrain.service.migrate import apply_migrations

        try:
            await apply_migrations(url)
        except BaseException:
            await drop_database(base_url, url)
            raise
    return url


async def drop_database(base_url: str, url: str, *, timeout_s: float = DROP_TIMEOUT_S) -> None:
    """Drop the database ``url`` names, connected to ``base_url``'s as the role that made it.

    Not ``WITH (FORCE)``: that terminates every other session in the database and refuses
    (``InsufficientPrivilegeError``) when one belongs to a superuser, as an autovacuum worker
    does after a million rows were written. Instead: end our own role's sessions (a service
    just stopped may leave one closing), then a plain DROP, which stops autovacuum workers
    itself, retried while a session is still going away."""
    name = database_name(url)
    if name == database_name(base_url):
        raise ValueError(f"refusing to drop {name!r}: it is the base database")
    admin = await asyncpg.connect(base_url)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND usename = current_user AND pid <> pg_backend_pid()",
                name,
            )
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
                return
            except asyncpg.ObjectInUseError:
                if loop.time() > deadline:
                    raise
                # A terminated backend takes a moment to exit; this is a bounded retry.
                await asyncio.sleep(0.2)
    finally:
        await admin.close()


@asynccontextmanager
async def scratch_database(
    base_url: str, prefix: str, *, migrate: bool = False
) -> AsyncIterator[str]:
    """``create_database`` for the length of a ``with`` block, dropped at its end."""
    url = await create_database(base_url, prefix, migrate=migrate)
    try:
        yield url
    finally:
        await drop_database(base_url, url)
