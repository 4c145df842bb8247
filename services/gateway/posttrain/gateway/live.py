"""Live updates for the SSE streams, pushed by PostgreSQL LISTEN/NOTIFY (no polling).

One listening connection per gateway process (``LiveHub``) hears the channels of
``posttrain.service.notify`` and fans each notification out to the streams open on the pipeline
it concerns. When a pipeline's rows change, the hub reads its status and its new history entries
once, for every stream of that pipeline, and hands each stream what it has not had yet: a
hundred clients following one pipeline cost two queries per change, not two hundred.

The same notifications keep a small cache of the encoded status and history documents that
requests read (``ReadCache``): a pipeline's entries are dropped as soon as it changes, so a
page that a hundred clients refresh is read from PostgreSQL once per change.

A lost listening connection is opened again (with backoff); meanwhile nothing is cached, and
once it is back every followed pipeline is read afresh, so nothing committed meanwhile is
missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
from fastapi.encoders import jsonable_encoder

from posttrain.orchestrator.client import aget_pipeline_history, aget_pipeline_status
from posttrain.service import notify
from posttrain.service.retry import backoff, retrying

log = logging.getLogger(__name__)

# A stream whose client reads slower than the pipeline changes is ended once this many updates
# wait for it (the client reconnects with Last-Event-ID and misses nothing).
MAX_PENDING = 10_000
_HISTORY_PAGE = 1000


def encode(value: Any) -> bytes:
    """JSON as the API answers it (times in ISO 8601, NaN as null)."""
    return orjson.dumps(value, default=jsonable_encoder, option=orjson.OPT_NON_STR_KEYS)


class ReadCache:
    """Encoded documents of pipelines, each dropped when its pipeline changes.

    A read that raced a change must not store what it read before the change: each change
    takes a number from a counter, and a document is stored only if no change of its pipeline
    came after the read began. Forgetting a pipeline's last change (to bound memory) raises the
    floor that every forgotten pipeline is assumed to have changed at. Requests that miss at
    once share one read (begun after the pipeline's last change), not one read each."""

    def __init__(self, pipelines: int = 2048) -> None:
        self.pipelines = pipelines
        self.enabled = False  # only while notifications are heard
        self.hits = 0
        self._docs: OrderedDict[str, dict[Hashable, bytes]] = OrderedDict()
        self._changed: OrderedDict[str, int] = OrderedDict()
        self._counter = 0
        self._floor = 0
        self._reading: dict[tuple[str, Hashable], tuple[int, asyncio.Future[bytes | None]]] = {}

    def changed(self, pipeline_id: str) -> None:
        self._counter += 1
        self._changed[pipeline_id] = self._counter
        self._changed.move_to_end(pipeline_id)
        while len(self._changed) > self.pipelines:
            _, at = self._changed.popitem(last=False)
            self._floor = max(self._floor, at)
        self._docs.pop(pipeline_id, None)

    def clear(self) -> None:
        self._docs.clear()
        self._floor = self._counter = self._counter + 1

    async def read(
        self, pipeline_id: str, key: Hashable, load: Callable[[], Awaitable[Any]]
    ) -> bytes | None:
        """The encoded document, from memory or from ``load`` (None: nothing to show)."""
        docs = self._docs.get(pipeline_id)
        if self.enabled and docs is not None and key in docs:
            self.hits += 1
            self._docs.move_to_end(pipeline_id)
            return docs[key]
        changed = self._changed.get(pipeline_id, self._floor)
        reading = self._reading.get((pipeline_id, key))
        if reading is not None and changed <= reading[0]:
            return await asyncio.shield(reading[1])
        began = self._counter
        future = asyncio.ensure_future(self._load(pipeline_id, key, load, began))
        self._reading[(pipeline_id, key)] = (began, future)

        def done(_: asyncio.Future[bytes | None]) -> None:
            if self._reading.get((pipeline_id, key), (0, None))[1] is future:
                del self._reading[(pipeline_id, key)]

        future.add_done_callback(done)
        return await asyncio.shield(future)

    async def _load(
        self, pipeline_id: str, key: Hashable, load: Callable[[], Awaitable[Any]], began: int
    ) -> bytes | None:
        value = await load()
        if value is None:
            return None
        doc = encode(value)
        if self.enabled and self._changed.get(pipeline_id, self._floor) <= began:
            self._docs.setdefault(pipeline_id, {})[key] = doc
            self._docs.move_to_end(pipeline_id)
            while len(self._docs) > self.pipelines:
                self._docs.popitem(last=False)
        return doc


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
        self.cache = ReadCache()

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
        self.cache.clear()  # whatever changed while nobody listened
        self.cache.enabled = True

    def _lost(self, conn: asyncpg.Connection) -> None:
        self.cache.enabled = False  # deaf: a change would not drop what is cached
        if self._closed or self._reconnect is not None:
            return
        log.warning("the live updates' database connection was lost: reconnecting")
        self._reconnect = asyncio.get_running_loop().create_task(self._relisten())

    async def _relisten(self) -> None:
        # ``stop`` cancels this task: cancellation ends the retries.
        try:
            await retrying(
                "live updates: reconnecting",
                transient=(OSError, asyncpg.PostgresError, TimeoutError),
                wait=backoff(initial_s=0.2, max_s=5.0),
            )(self._listen)
            for pipeline_id in list(self._subs):  # whatever changed while deaf
                self._refresh(pipeline_id)
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
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed() and self._reconnect is None

    @property
    def streams(self) -> int:
        return sum(len(s) for s in self._subs.values())

    # --- notifications ----------------------------------------------------------------------

    def _heard(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self.notifications += 1
        try:
            if channel == notify.PIPELINES:
                self.cache.changed(payload)
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
