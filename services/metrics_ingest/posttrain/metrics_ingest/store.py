"""Writing rows to PostgreSQL: jobs and sources registered once, then one COPY per batch.

The fast path COPYs a batch straight into ``metrics``: nothing is faster. A batch that holds a
point already stored (a redelivery after a crash, a file synced twice) makes the unique index
refuse the COPY; that batch is then written again through a staging table with
``INSERT ... ON CONFLICT DO NOTHING``, which skips what is already there. Redelivery is rare, so
almost every batch goes at COPY speed, and none is ever stored twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import asyncpg
import orjson

from posttrain.events.messages.metrics import run_key
from posttrain.metrics_ingest.core.rows import ROW_COLUMNS, TABLE_COLUMNS, ReportRows, Row
from posttrain.service import notify

log = logging.getLogger(__name__)

TABLE = "metrics"
STAGING = "metrics_staging"
_COLUMN_LIST = ", ".join(TABLE_COLUMNS)


@dataclass(frozen=True, slots=True)
class WriteResult:
    offered: int
    inserted: int
    via_staging: bool

    @property
    def duplicates(self) -> int:
        return self.offered - self.inserted


def is_data_error(exc: BaseException) -> bool:
    """An error that a value in the batch caused (the same batch would fail again), as opposed
    to the server or the connection being away (worth retrying)."""
    # Encoding a value in the client raises ValueError (UnicodeEncodeError), TypeError or
    # OverflowError; the server answers class 22 (asyncpg.DataError).
    return isinstance(exc, asyncpg.DataError | ValueError | TypeError | OverflowError)


_INT8 = struct.Struct("!q")


async def prepare_connection(conn: asyncpg.Connection) -> None:
    """Make ``conn`` take timestamptz and jsonb values as rows carry them
    (``core.rows.timestamp_us``, ``core.rows.custom_json``): they go to the server as they are.
    Only for connections that write rows: reading those types on such a connection returns
    the same raw values."""
    await conn.set_type_codec(
        "timestamptz",
        schema="pg_catalog",
        encoder=_INT8.pack,
        decoder=_unpack_int8,
        format="binary",
    )
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=bytes, decoder=bytes, format="binary"
    )


async def release_connection(conn: asyncpg.Connection) -> None:
    """Undo ``prepare_connection`` on a connection that is not ours (the caller's pool's)."""
    await conn.reset_type_codec("timestamptz", schema="pg_catalog")
    await conn.reset_type_codec("jsonb", schema="pg_catalog")


def _unpack_int8(data: bytes) -> int:
    return int(_INT8.unpack(data)[0])


class Connector:
    """One connection to PostgreSQL, opened on demand and replaced after a failure; the
    ingest's own migrations are applied the first time it connects (idempotent and locked)."""

    def __init__(self, dsn: str, *, connect_timeout_s: float = 5.0, migrate: bool = True) -> None:
        self.dsn = dsn
        self.connect_timeout_s = connect_timeout_s
        self._migrate = migrate
        self._conn: asyncpg.Connection | None = None

    async def connection(self) -> asyncpg.Connection:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        if self._migrate:
            from posttrain.service.migrate import apply_migrations

            await asyncio.wait_for(
                apply_migrations(self.dsn, owner="metrics_ingest"), self.connect_timeout_s * 6
            )
            self._migrate = False
        conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout_s)
        try:
            await prepare_connection(conn)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        return conn

    async def discard(self) -> None:
        """Drop the connection after an error: the next ``connection()`` opens a new one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)


class MetricsWriter:
    """Writes batches of ``ReportRows``; keeps the job and source numbers it has seen."""

    def __init__(self, *, timeout_s: float = 120.0) -> None:
        self.timeout_s = timeout_s
        self._jobs: dict[str, int] = {}
        self._sources: dict[tuple[str, str], tuple[int, int]] = {}

    async def write(self, conn: asyncpg.Connection, reports: Sequence[ReportRows]) -> WriteResult:
        """Store every row of ``reports`` that is not stored yet, in one transaction. ``conn``
        must have been through ``prepare_connection``."""
        ids = await self.register(conn, reports)
        offered = sum(len(r.rows) for r in reports)
        if offered == 0:
            return WriteResult(0, 0, False)
        try:
            async with conn.transaction():
                await conn.copy_records_to_table(
                    TABLE,
                    records=_records(reports, ids),
                    columns=TABLE_COLUMNS,
                    timeout=self.timeout_s,
                )
                await _notify(conn, reports)
            return WriteResult(offered, offered, False)
        except asyncpg.UniqueViolationError:
            pass  # some points are stored already: write again, skipping them
        async with conn.transaction():
            await conn.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {STAGING} (LIKE {TABLE}) ON COMMIT DELETE ROWS"
            )
            await conn.copy_records_to_table(
                STAGING,
                records=_records(reports, ids),
                columns=TABLE_COLUMNS,
                timeout=self.timeout_s,
            )
            status = await conn.execute(
                f"INSERT INTO {TABLE} ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM {STAGING} "
                "ON CONFLICT DO NOTHING",
                timeout=self.timeout_s,
            )
            await _notify(conn, reports)
        return WriteResult(offered, int(status.rsplit(" ", 1)[-1]), True)

    async def register(
        self, conn: asyncpg.Connection, reports: Sequence[ReportRows]
    ) -> dict[tuple[str, str], tuple[int, int]]:
        """The (job_no, source_no) of every (job, source) in ``reports``, registering the new
        ones in a transaction of their own: committed before any row names them."""
        known = self._sources
        missing = {(r.job_id, r.source): r for r in reports if (r.job_id, r.source) not in known}
        if missing:
            await self._register(conn, list(missing.values()))
        return known

    async def _register(self, conn: asyncpg.Connection, reports: list[ReportRows]) -> None:
        jobs: dict[str, ReportRows] = {}
        for r in reports:
            jobs.setdefault(r.job_id, r)
        async with conn.transaction():
            # DO UPDATE (not DO NOTHING) so that every job comes back in RETURNING; routing
            # learnt later fills what was unknown, never overwrites.
            rows = await conn.fetch(
                """
                INSERT INTO metric_jobs AS j (job_id, pipeline_id, stage, attempt)
                SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[])
                ON CONFLICT (job_id) DO UPDATE SET
                    pipeline_id = COALESCE(j.pipeline_id, EXCLUDED.pipeline_id),
                    stage = COALESCE(j.stage, EXCLUDED.stage),
                    attempt = COALESCE(j.attempt, EXCLUDED.attempt)
                RETURNING job_id, job_no
                """,
                list(jobs),
                [r.pipeline_id for r in jobs.values()],
                [r.stage for r in jobs.values()],
                [r.attempt for r in jobs.values()],
            )
            job_nos = {row["job_id"]: row["job_no"] for row in rows}
            # The upsert above locked each job's row: runs are numbered by one writer at a time.
            wanted = sorted(
                {(job_nos[r.job_id], r.source, run_key(r.source, r.attempt)) for r in reports}
            )
            runs = await _number_runs(conn, wanted)
            await conn.execute(
                """
                INSERT INTO metric_sources (job_no, source, run_key, run)
                SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::int[])
                ON CONFLICT (job_no, source) DO NOTHING
                """,
                [w[0] for w in wanted],
                [w[1] for w in wanted],
                [w[2] for w in wanted],
                [runs[(w[0], w[2])] for w in wanted],
            )
            pairs = [(w[0], w[1]) for w in wanted]
            found = await conn.fetch(
                """
                SELECT s.job_no, s.source, s.source_no
                FROM metric_sources s
                JOIN unnest($1::int[], $2::text[]) AS want (job_no, source)
                  ON want.job_no = s.job_no AND want.source = s.source
                """,
                [p[0] for p in pairs],
                [p[1] for p in pairs],
            )
        by_no = {no: job for job, no in job_nos.items()}
        self._jobs.update(job_nos)
        for row in found:
            self._sources[(by_no[row["job_no"]], row["source"])] = (row["job_no"], row["source_no"])


_STEP = ROW_COLUMNS.index("step")
_STEP_OF = operator.itemgetter(_STEP)


def notifications(reports: Sequence[ReportRows]) -> list[str]:
    """One ``notify.METRICS`` payload per job of a batch, with the highest step written."""
    steps: dict[str, int] = {}
    pipelines: dict[str, str | None] = {}
    for report in reports:
        rows = report.rows
        if not rows:
            continue
        # One C call per report (a generator costs more than the rest for a one-point message).
        step = max(map(_STEP_OF, rows)) if len(rows) > 1 else rows[0][_STEP]
        steps[report.job_id] = max(step, steps.get(report.job_id, step))
        pipelines[report.job_id] = pipelines.get(report.job_id) or report.pipeline_id
    return [
        orjson.dumps({"job_id": job, "step": step, "pipeline_id": pipelines[job]}).decode()
        for job, step in steps.items()
    ]


async def _notify(conn: asyncpg.Connection, reports: Sequence[ReportRows]) -> None:
    # In the rows' transaction: live views are woken when, and only if, the points are stored.
    payloads = notifications(reports)
    if payloads:
        await conn.execute(notify.NOTIFY_EACH, notify.METRICS, payloads)


def _records(
    reports: Sequence[ReportRows], ids: dict[tuple[str, str], tuple[int, int]]
) -> Iterator[Row]:
    for report in reports:
        prefix = ids[(report.job_id, report.source)]
        for row in report.rows:
            yield prefix + row


async def _number_runs(
    conn: asyncpg.Connection, wanted: list[tuple[int, str, str]]
) -> dict[tuple[int, str], int]:
    """The run number of each (job_no, run_key): the one already given, else the job's next."""
    job_nos = sorted({w[0] for w in wanted})
    rows = await conn.fetch(
        "SELECT job_no, run_key, run FROM metric_sources WHERE job_no = ANY($1::int[])", job_nos
    )
    runs = {(r["job_no"], r["run_key"]): r["run"] for r in rows}
    last: dict[int, int] = {}
    for (job_no, _), run in runs.items():
        last[job_no] = max(last.get(job_no, 0), run)
    for job_no, _, key in wanted:
        if (job_no, key) not in runs:
            last[job_no] = last.get(job_no, 0) + 1
            runs[(job_no, key)] = last[job_no]
    return runs
