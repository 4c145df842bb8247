"""Versioned SQL migrations: ``migrations/NNNN_<name>.sql``, applied in order, each in its own
transaction, recorded in ``schema_migrations``.

0001 creates ``schema_migrations`` itself, so an absent table simply means that nothing has been
applied yet. Concurrent callers (two services starting at once) are serialised by a
session-level advisory lock: the second one waits, then finds nothing left to do.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable

import asyncpg

# Arbitrary but fixed: every posttrain migrator in any process takes this same lock.
ADVISORY_LOCK_KEY = 0x706F_7374_7472_6E  # "posttrn"
_FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def id(self) -> str:
        return f"{self.version:04d}_{self.name}"


def parse_filename(filename: str) -> tuple[int, str] | None:
    """(version, name) of ``0001_foundation.sql``; None for a file that is not a migration."""
    match = _FILENAME.match(filename)
    if match is None:
        return None
    return int(match.group(1)), match.group(2)


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """Every migration file, ordered by version; duplicate versions are an error."""
    root = directory or resources.files("posttrain.db").joinpath("migrations")
    found: dict[int, Migration] = {}
    for entry in root.iterdir():
        parsed = parse_filename(entry.name)
        if parsed is None:
            if entry.name.endswith(".sql"):
                raise ValueError(f"migration file {entry.name!r} is not named NNNN_<name>.sql")
            continue
        version, name = parsed
        if version in found:
            raise ValueError(f"two migrations have version {version:04d}")
        found[version] = Migration(version, name, entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


async def _applied_versions(conn: asyncpg.Connection) -> set[int]:
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return set()
    return {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}


async def pending_migrations(dsn: str) -> list[str]:
    """The ids (``0001_foundation``) of migrations not yet applied to that database, in order."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        applied = await _applied_versions(conn)
    finally:
        await conn.close()
    return [m.id for m in load_migrations() if m.version not in applied]


async def apply_migrations(dsn: str) -> list[str]:
    """Apply every pending migration in order; the ids applied by this call (empty if none)."""
    migrations = load_migrations()
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
        try:
            # Read under the lock: whatever another caller applied meanwhile is now visible.
            applied = await _applied_versions(conn)
            done: list[str] = []
            for migration in migrations:
                if migration.version in applied:
                    continue
                async with conn.transaction():
                    # No arguments: the simple query protocol, so a file may hold many statements.
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        migration.version,
                        migration.name,
                    )
                done.append(migration.id)
            return done
        finally:
            # If the connection broke, closing it releases the lock anyway: do not let the
            # unlock's error hide the migration's.
            with contextlib.suppress(asyncpg.PostgresError, OSError):
                await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
    finally:
        await conn.close()
