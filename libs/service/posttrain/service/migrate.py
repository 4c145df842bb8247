"""The one migrator: versioned SQL migrations, each owner's in its own distribution, applied in
order, each in its own transaction, recorded in the owner's ledger table.

Every owner of tables (the platform, each service) keeps its migrations in a ``migrations``
folder of its own package, named ``NNNN_<name>.sql`` and numbered on its own, and declares the
package under the ``posttrain.migrations`` entry-point group (name: the owner), e.g. in the
service's ``pyproject.toml``::

    [project.entry-points."posttrain.migrations"]
    diagnostics = "posttrain.diagnostics"

An owner's applied migrations are recorded in ``<owner>_migrations``, which the migrator
creates, so owners never compete for version numbers and who owns a table is read from where
its migration lives. The platform's (``platform``, the root distribution's ``posttrain.db``)
keep their first ledger, ``schema_migrations``, which its 0001 creates; they are applied first,
then each other owner's in name order. A service applies only its own (``owner=``); ``posttrain
stack up`` and the test fixtures apply every installed owner's.

Tables that moved to their owner: a migration whose file starts with ``-- was: NNNN_<name>``
was the platform's migration of that id. A database that recorded that id in
``schema_migrations`` already has its tables, so the owner's ledger adopts it (records it,
without running it again).

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
PLATFORM = "platform"  # the root distribution's posttrain.db
PLATFORM_LEDGER = "schema_migrations"
_FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_OWNER = re.compile(r"^[a-z][a-z0-9_]*$")
_WAS = re.compile(r"\A-- was: (\d{4})_([a-z0-9_]+)\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str
    owner: str = PLATFORM
    # (version, name) of the platform's migration this one was before it moved to its owner.
    was: tuple[int, str] | None = None

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


def _was(sql: str) -> tuple[int, str] | None:
    match = _WAS.match(sql)
    return None if match is None else (int(match.group(1)), match.group(2))


def load_migrations(directory: Traversable, owner: str) -> list[Migration]:
    """Every migration file of one owner's folder, ordered by version; duplicate versions are
    an error."""
    found: dict[int, Migration] = {}
    for entry in directory.iterdir():
        parsed = parse_filename(entry.name)
        if parsed is None:
            if entry.name.endswith(".sql"):
                raise ValueError(f"migration file {entry.name!r} is not named NNNN_<name>.sql")
            continue
        version, name = parsed
        if version in found:
            raise ValueError(f"{owner}: two migrations have version {version:04d}")
        sql = entry.read_text(encoding="utf-8")
        found[version] = Migration(version, name, sql, owner, _was(sql))
    return [found[v] for v in sorted(found)]


def migration_sets(owner: str | None = None) -> list[MigrationSet]:
    """Every installed owner's migrations, the platform's first, then by owner name; only
    ``owner``'s when given."""
    sets: list[MigrationSet] = []
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if not _OWNER.match(entry.name):
            raise ValueError(f"{ENTRY_POINT_GROUP} entry point {entry.name!r}: bad owner name")
        folder = resources.files(entry.value).joinpath("migrations")
        ledger = PLATFORM_LEDGER if entry.name == PLATFORM else f"{entry.name}_migrations"
        sets.append(MigrationSet(entry.name, ledger, tuple(load_migrations(folder, entry.name))))
    sets.sort(key=lambda s: (s.owner != PLATFORM, s.owner))
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


async def _platform_record(conn: asyncpg.Connection) -> set[tuple[int, str]]:
    """(version, name) of every migration ``schema_migrations`` records: what a database
    migrated before its tables moved to their owners already has."""
    if await conn.fetchval("SELECT to_regclass($1)", PLATFORM_LEDGER) is None:
        return set()
    rows = await conn.fetch(f"SELECT version, name FROM {PLATFORM_LEDGER}")
    return {(row["version"], row["name"]) for row in rows}


async def pending_migrations(dsn: str, owner: str | None = None) -> list[str]:
    """The ids (``0001_foundation``, ``diagnostics/0001_anomalies``) of migrations not yet
    recorded in that database, in order (one that ``apply_migrations`` would only adopt is
    listed too: its ledger does not record it yet)."""
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
    applied or adopted by this call (empty if none)."""
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
    if all(m.version in applied for m in migrations.migrations):
        return []
    adoptable = await _platform_record(conn)
    done: list[str] = []
    for migration in migrations.migrations:
        if migration.version in applied:
            continue
        async with conn.transaction():
            if migration.was is None or migration.was not in adoptable:
                # No arguments: the simple query protocol, so a file may hold many statements.
                await conn.execute(migration.sql)
            await conn.execute(
                f"INSERT INTO {migrations.ledger} (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
        done.append(migration.id)
    return done
