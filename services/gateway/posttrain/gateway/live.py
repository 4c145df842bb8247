"""Live updates for the SSE streams, pushed by PostgreSQL LISTEN/NOTIFY (no polling).

One listening connection per gateway process (``LiveHub``) hears the channels of
``posttrain.service.notify`` and fans each notification out to the streams open on the pipeline
it concerns. When a pipeline's rows change, the hub reads its status and its new history entries
once, for every stream of that pipeline, and hands each stream what it has not had yet: a
hundred clients following one pipeline cost two queries per change, not two hundred.

A lost listening connection is opened again (with backoff); every followed pipeline is then read
afresh, so nothing committed meanwhile is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
from fastapi.encoders import jsonable_encoder

from posttrain.orchestrator.api import aget_pipeline_history, aget_pipeline_status
from posttrain.service import notify

log = logging.getLogger(__name__)

# A stream whose client reads slower than the pipeline changes is ended once this many updates
# wait for it (the client reconnects with Last-Event-ID and misses nothing).
MAX_PENDING = 10_000
_HISTORY_PAGE = 1000


def encode(value: Any) -> bytes:
    # The encoder FastAPI's responses use, so that a time reads the same in a stream.
    return orjson.dumps(jsonable_encoder(value))


@dataclass(eq=False)
class Subscription:
    """One open stream of one pipeline: the updates it has not sent yet, in order."""

    pipeline_id: str
    seq: int  # the last history entry handed to it
    status: bytes | None = None  # the last status document handed to it
    jobs: frozenset[str] = frozenset()
    queue: asyncio.Queue[tuple[str, bytes, int | None]] = field(default_factory=asyncio.Queue)
    overflowed: bool = False

    def put(self, event: str, data: bytes, seq: int | None = None) -> None:
        if self.queue.qsize() >= MAX_PENDING:
            self.overflowed = True
            return
        self.queue.put_nowait((event, data, seq))


class LiveHub:
    def __init__(self, database_url: str, pool: asyncpg.Pool) -> None:
        self.database_url = database_url
        self.pool = pool
        self._subs: dict[str, set[Subscription]] = {}
        self._conn: asyncpg.Connection | None = None
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._reconnect: asyncio.Task[None] | None = None
        self._closed = False
        self.notifications = 0  # heard, for /metrics

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        await self._listen()

    async def stop(self) -> None:
        self._closed = True
        tasks = [*self._refreshing.values()]
        if self._reconnect is not None:
            tasks.append(self._reconnect)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self.database_url, timeout=10)
        for channel in notify.CHANNELS:
            await conn.add_listener(channel, self._heard)
        conn.add_termination_listener(self._lost)
        self._conn = conn

    def _lost(self, conn: asyncpg.Connection) -> None:
        if self._closed or self._reconnect is not None:
            return
        log.warning("the live updates' database connection was lost: reconnecting")
        self._reconnect = asyncio.get_running_loop().create_task(self._relisten())

    async def _relisten(self) -> None:
        delay = 0.2
        try:
            while not self._closed:
                try:
                    await self._listen()
                except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                    log.warning("live updates: reconnecting failed (%s), retrying", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                for pipeline_id in list(self._subs):  # whatever changed while deaf
                    self._refresh(pipeline_id)
                return
        finally:
            self._reconnect = None

    # --- streams ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def subscribe(self, pipeline_id: str, after: int) -> Iterator[Subscription]:
        """Follow a pipeline: its current status and the history entries numbered above
        ``after`` arrive first, then every change."""
        sub = Subscription(pipeline_id, after)
        self._subs.setdefault(pipeline_id, set()).add(sub)
        self._refresh(pipeline_id)
        try:
            yield sub
        finally:
            subs = self._subs.get(pipeline_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[pipeline_id]

    @property
    def streams(self) -> int:
        return sum(len(s) for s in self._subs.values())

    # --- notifications ----------------------------------------------------------------------

    def _heard(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self.notifications += 1
        try:
            if channel == notify.PIPELINES:
                if payload in self._subs:
                    self._refresh(payload)
            elif channel == notify.METRICS:
                doc = orjson.loads(payload)
                data = orjson.dumps({"job_uuid": doc["job_id"], "step": doc["step"]})
                for sub in self._concerned(doc.get("pipeline_id"), doc["job_id"]):
                    sub.put("metrics", data)
            elif channel == notify.ANOMALIES:
                doc = orjson.loads(payload)
                data = orjson.dumps({**doc, "job_uuid": doc["job_id"]})
                for sub in self._concerned(doc.get("pipeline_id"), doc["job_id"]):
                    sub.put("anomaly", data)
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable notification on %s ignored: %.200s", channel, payload)

    def _concerned(self, pipeline_id: str | None, job_id: str) -> list[Subscription]:
        if pipeline_id is not None and pipeline_id in self._subs:
            return list(self._subs[pipeline_id])
        # Points written without routing: the streams whose pipeline runs that job.
        return [s for subs in self._subs.values() for s in subs if job_id in s.jobs]

    def _refresh(self, pipeline_id: str) -> None:
        if pipeline_id in self._refreshing:
            self._again.add(pipeline_id)  # read once more when the running read is done
            return
        task = asyncio.get_running_loop().create_task(self._read(pipeline_id))
        self._refreshing[pipeline_id] = task

    async def _read(self, pipeline_id: str) -> None:
        try:
            while True:
                self._again.discard(pipeline_id)
                try:
                    await self._deliver(pipeline_id)
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("live updates: reading %s failed: %s", pipeline_id, exc)
                if pipeline_id not in self._again or self._closed:
                    return
        finally:
            self._refreshing.pop(pipeline_id, None)

    async def _deliver(self, pipeline_id: str) -> None:
        subs = self._subs.get(pipeline_id)
        if not subs:
            return
        after = min(s.seq for s in subs)
        status = await aget_pipeline_status(pipeline_id, db=self.pool)
        if status is None:
            return  # not projected yet: its first NOTIFY will come
        entries: list[dict[str, Any]] = []
        while True:
            page = await aget_pipeline_history(
                pipeline_id, after=after, limit=_HISTORY_PAGE, db=self.pool
            )
            if page is None:
                break
            entries.extend(page["events"])
            if page["next_after"] is None:
                break
            after = page["next_after"]
        doc = encode(status)
        jobs = frozenset(s["job_id"] for s in status["stages"] if s["job_id"])
        encoded = [(e["seq"], encode(e)) for e in entries]
        for sub in self._subs.get(pipeline_id, ()):
            sub.jobs = jobs
            for seq, data in encoded:
                if seq > sub.seq:
                    sub.put("history", data, seq)
                    sub.seq = seq
            if doc != sub.status:
                sub.status = doc
                sub.put("status", doc)
