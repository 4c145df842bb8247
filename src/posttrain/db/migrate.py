"""Versioned SQL migrations: ``migrations/NNNN_<name>.sql``, applied in order, each in its own
transaction, recorded in a ledger table.

The platform's own migrations live in ``posttrain/db/migrations`` and are recorded in
``schema_migrations`` (0001 creates that table itself, so an absent table simply means that
nothing has been applied yet).

A service that owns tables keeps its migrations in its own package and declares them under the
``posttrain.migrations`` entry-point group (name: the owner, value: the package holding a
``migrations`` folder), e.g. in the service's ``pyproject.toml``::

    [project.entry-points."posttrain.migrations"]
    diagnostics = "posttrain.diagnostics"

An owner's migrations are numbered on their own (``diagnostics/0001_anomalies``) and recorded in
the owner's own ledger, ``<owner>_migrations``, which the migrator creates: owners never compete
for version numbers, and who owns a table is read from where its migration lives. The
platform's migrations are applied first, then each owner's in name order.

Concurrent callers (two services starting at once) are serialised by a session-level advisory
lock: the second one waits, then finds nothing left to do.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from importlib import metadata, resources
from importlib.abc import Traversable

import asyncpg

# Arbitrary but fixed: every posttrain migrator in any process takes this same lock.
ADVISORY_LOCK_KEY = 0x706F_7374_7472_6E  # "posttrn"
ENTRY_POINT_GROUP = "posttrain.migrations"
PLATFORM = "platform"  # the owner of posttrain/db/migrations
PLATFORM_LEDGER = "schema_migrations"
_FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_OWNER = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str
    owner: str = PLATFORM

    @property
    def id(self) -> str:
        """``0001_foundation`` for the platform's, ``<owner>/0001_<name>`` for an owner's."""
        own = f"{self.version:04d}_{self.name}"
        return own if self.owner == PLATFORM else f"{self.owner}/{own}"


@dataclass(frozen=True, slots=True)
class MigrationSet:
    """One owner's migrations and the ledger table that records which are applied."""

    owner: str
    ledger: str
    migrations: tuple[Migration, ...]


def parse_filename(filename: str) -> tuple[int, str] | None:
    """(version, name) of ``0001_foundation.sql``; None for a file that is not a migration."""
    match = _FILENAME.match(filename)
    if match is None:
        return None
    return int(match.group(1)), match.group(2)


def load_migrations(directory: Traversable | None = None, owner: str = PLATFORM) -> list[Migration]:
    """Every migration file of one folder (the platform's by default), ordered by version;
    duplicate versions are an error."""
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
            raise ValueError(f"{owner}: two migrations have version {version:04d}")
        found[version] = Migration(version, name, entry.read_text(encoding="utf-8"), owner)
    return [found[v] for v in sorted(found)]


def migration_sets(owner: str | None = None) -> list[MigrationSet]:
    """The platform's migrations, then each installed owner's (by name); only ``owner``'s when
    given."""
    sets = [MigrationSet(PLATFORM, PLATFORM_LEDGER, tuple(load_migrations()))]
    for entry in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if not _OWNER.match(entry.name) or entry.name == PLATFORM:
            raise ValueError(f"{ENTRY_POINT_GROUP} entry point {entry.name!r}: bad owner name")
        folder = resources.files(entry.value).joinpath("migrations")
        sets.append(
            MigrationSet(
                entry.name,
                f"{entry.name}_migrations",
                tuple(load_migrations(folder, entry.name)),
            )
        )
    if owner is None:
        return sets
    chosen = [s for s in sets if s.owner == owner]
    if not chosen:
        raise ValueError(f"no migrations are declared for {owner!r} (is it installed?)")
    return chosen


def all_migrations() -> list[Migration]:
    """Every migration of every owner, in the order they are applied."""
    return [m for s in migration_sets() for m in s.migrations]


async def _applied_versions(conn: asyncpg.Connection, ledger: str) -> set[int]:
    if await conn.fetchval("SELECT to_regclass($1)", ledger) is None:
        return set()
    return {row["version"] for row in await conn.fetch(f"SELECT version FROM {ledger}")}


async def pending_migrations(dsn: str, owner: str | None = None) -> list[str]:
    """The ids (``0001_foundation``, ``diagnostics/0001_anomalies``) of migrations not yet
    applied to that database, in order."""
    sets = migration_sets(owner)
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        pending: list[str] = []
        for s in sets:
            applied = await _applied_versions(conn, s.ledger)
            pending += [m.id for m in s.migrations if m.version not in applied]
    finally:
        await conn.close()
    return pending


async def apply_migrations(dsn: str, owner: str | None = None) -> list[str]:
    """Apply every pending migration in order (every owner's, or only ``owner``'s); the ids
    applied by this call (empty if none)."""
    sets = migration_sets(owner)
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
        try:
            done: list[str] = []
            for s in sets:
                done += await _apply_set(conn, s)
            return done
        finally:
            # If the connection broke, closing it releases the lock anyway: do not let the
            # unlock's error hide the migration's.
            with contextlib.suppress(asyncpg.PostgresError, OSError):
                await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
    finally:
        await conn.close()


async def _apply_set(conn: asyncpg.Connection, migrations: MigrationSet) -> list[str]:
    if migrations.owner != PLATFORM:
        # The platform's ledger is made by its 0001; an owner's is the migrator's to make.
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {migrations.ledger} ("
            "version integer PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
    # Read under the lock: whatever another caller applied meanwhile is now visible.
    applied = await _applied_versions(conn, migrations.ledger)
    done: list[str] = []
    for migration in migrations.migrations:
        if migration.version in applied:
            continue
        async with conn.transaction():
            # No arguments: the simple query protocol, so a file may hold many statements.
            await conn.execute(migration.sql)
            await conn.execute(
                f"INSERT INTO {migrations.ledger} (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
        done.append(migration.id)
    return done
