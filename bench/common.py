"""What every benchmark shares: a throwaway topic namespace and database on the real stack,
and the few ways figures are summed up and printed."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Sequence
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from posttrain.events.kafka import KafkaSettings, ensure_topics
from posttrain.events.topics import TOPICS, Topic
from posttrain.service.settings import database_url


async def fresh_namespace(prefix: str, topics: list[Topic] | None = None) -> KafkaSettings:
    """KafkaSettings for a new namespace, with its topics created."""
    base = KafkaSettings.from_env(client_id=f"bench-{prefix}")
    settings = replace(base, namespace=f"bench-{prefix}-{uuid.uuid4().hex[:8]}")
    specs = [TOPICS[t] for t in topics] if topics else None
    await ensure_topics(settings, specs)
    return settings


async def drop_namespace(settings: KafkaSettings) -> None:
    """Delete the namespace's topics so benchmarks leave nothing behind."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(settings.namespace + ".")]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


def _base_database_url() -> str:
    return database_url()


async def fresh_database(prefix: str) -> str:
    """The URL of a new, empty database on the stack's server (never the default one)."""
    base = _base_database_url()
    name = f"bench_{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(base)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return urlunsplit(urlsplit(base)._replace(path=f"/{name}"))


async def drop_database(url: str, timeout_s: float = 60.0) -> None:
    """Drop a database made by ``fresh_database``, as the role that created it.

    Not ``WITH (FORCE)``: that terminates every other session in the database and refuses
    (``InsufficientPrivilegeError``) when one belongs to a superuser, which an autovacuum
    worker does after a benchmark has written a million rows. Instead: end our own role's
    sessions (services a benchmark stopped may leave some closing), then a plain DROP, which
    stops autovacuum workers itself; retried while a session is still going away."""
    name = urlsplit(url).path.lstrip("/")
    admin = await asyncpg.connect(_base_database_url())
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
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
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await admin.close()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def load() -> str:
    """The machine's load averages, printed beside a figure: the machine is shared."""
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f} on {os.cpu_count()} cpus"
