"""``sync_metrics_from_file``: a JSONL metric file (SEED.md mode B) into PostgreSQL, idempotent.

Each line's point has a permanent identity (``posttrain.events.metricfile``, the same for the
agent's tailers), and rows go through the same writer as the Kafka path, which skips points
already stored: syncing a file twice, or again after lines were appended, or a file an agent
also tails, stores each point once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from posttrain.events.metricfile import FileLine, read_lines, source_of_file
from posttrain.metrics_ingest.core.rows import RowError
from posttrain.metrics_ingest.core.wire import rows_from_points
from posttrain.metrics_ingest.store import MetricsWriter, prepare_connection, release_connection
from posttrain.service.settings import database_url

BATCH_POINTS = 20_000


@dataclass(slots=True)
class SyncResult:
    """What a sync found and did. ``errors`` lists (line number from 1, why) of lines that
    hold no point."""

    path: str
    job_id: str
    source: str
    points: int = 0
    inserted: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        return self.points - self.inserted


async def sync_metrics_from_file(
    job_uuid: str, path: str | os.PathLike[str], *, db: Any = None
) -> SyncResult:
    """Store every point of the file at ``path`` that is not stored yet; returns counts.

    ``db`` is an asyncpg connection or pool; by default a connection to ``DATABASE_URL``."""
    file = Path(path)
    writer = MetricsWriter()
    # The file is read and parsed in a worker thread, a chunk at a time: a big file must not
    # stall the caller's event loop (the gateway's, say).
    fh = await asyncio.to_thread(open, file, "rb")
    try:
        default_timestamp = os.fstat(fh.fileno()).st_mtime
        source = await asyncio.to_thread(source_of_file, fh)
        result = SyncResult(str(file), job_uuid, source or "")
        if source is None:
            return result  # not one line yet
        fh.seek(0)
        chunks = _chunks(read_lines(fh, default_timestamp, job_uuid), result)
        async with _connection(db) as conn:
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                try:
                    report = rows_from_points(job_uuid, source, chunk)
                except RowError:
                    # Find the culprits one by one; the others are written.
                    report = rows_from_points(job_uuid, source, list(_storable(chunk, result)))
                written = await writer.write(conn, [report])
                result.points += written.offered
                result.inserted += written.inserted
    finally:
        fh.close()
    return result


def _chunks(lines: Iterator[FileLine], result: SyncResult) -> Iterator[list[tuple[int, Any]]]:
    chunk: list[tuple[int, Any]] = []
    for line in lines:
        if line.point is None:
            result.errors.append((line.number + 1, line.error or "unreadable"))
            continue
        chunk.append((line.number, line.point))
        if len(chunk) >= BATCH_POINTS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _storable(chunk: list[tuple[int, Any]], result: SyncResult) -> Iterator[tuple[int, Any]]:
    for seq, point in chunk:
        try:
            rows_from_points(result.job_id, result.source, [(seq, point)])
        except RowError as exc:
            result.errors.append((seq + 1, str(exc)))
            continue
        yield seq, point


@contextlib.asynccontextmanager
async def _connection(db: Any) -> AsyncIterator[asyncpg.Connection]:
    """A connection prepared for writing rows: our own, or the caller's, restored after."""
    if db is None:
        conn = await asyncpg.connect(database_url(), timeout=10)
        try:
            await prepare_connection(conn)
            yield conn
        finally:
            await conn.close()
    elif isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn, _borrowed(conn):
            yield conn
    else:
        async with _borrowed(db):
            yield db


@contextlib.asynccontextmanager
async def _borrowed(conn: asyncpg.Connection) -> AsyncIterator[None]:
    await prepare_connection(conn)
    try:
        yield
    finally:
        await release_connection(conn)
