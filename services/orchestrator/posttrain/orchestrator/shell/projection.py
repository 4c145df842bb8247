"""The read model: pipelines, their stages and history, and the agents, projected from the event
log and the agents topic into PostgreSQL.

The projection folds the log with the same ``apply`` as the orchestrator and writes whole-row
snapshots of the pipelines each batch touched, once per batch (with the rows of the stages its
events changed), one history row per event (numbered within its pipeline by the fold), and the
log offsets, in one PostgreSQL transaction that also NOTIFYs each touched pipeline's id
(``posttrain.service.notify.PIPELINES``) for live views (``shell.read_model``: COPY, then one
merge per table). A snapshot carries the number of events it reflects, and a row never moves
back to an older one; history rows are keyed by (pipeline, number): projecting is idempotent.

A first catch-up of a long log (a new read-model database, a first start) is the costly case:
a batch then folds up to ``batch_events`` records as they are read, events read as views
(``posttrain.events.views``, no model validation) with the cyclic GC paused, yielding to the
event loop it shares with the orchestrator every few records (``YIELD_EVERY``), and writes each
pipeline it touched once. At the log's end a batch is what arrives within a quarter of a second
(``TAIL_WINDOW_S``) of its first read.

Memory and restart time follow active work, not history. A started projection resumes from the
offsets it saved (committed with the rows they stand for), not from the log's beginning. Each
pipelines row also holds the pipeline's folded state (``core.snapshot.encode_archived``, the
snapshots' one codec) and the offset of the last event it reflects: a pipeline the projection
does not hold (after a restart, or because it ended and left memory once written) is loaded from
its row when an event about it arrives, and an event at or before that offset is skipped. A row
whose state cannot be read (written before rows held states, or corrupt) is never guessed at:
its partition is folded again from the start, with a warning, without loading any state from
rows and without saving an older position, until it is back where it was.

Agents: every heartbeat on the compacted ``posttrain.agents`` topic is read (in full, as the
orchestrator reads it) and each agent's latest one kept in ``agents``; a row only moves to a
later offset of the topic, so reading it again changes nothing. Projecting both here keeps one
writer of the orchestrator's read model, with one database pool, in the process that has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import msgspec
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import BaseModel

from posttrain.events import DecodeError, Envelope, decode
from posttrain.events.kafka import KafkaSettings
from posttrain.events.messages import AgentHeartbeat
from posttrain.events.topics import TOPICS, Topic
from posttrain.events.views import EnvelopeView, ViewDecoder
from posttrain.orchestrator.core.snapshot import (
    SnapshotUnusable,
    archivable,
    decode_archived,
    encode_archived,
)
from posttrain.orchestrator.core.state import PipelineState, apply
from posttrain.orchestrator.core.view import (
    HIDDEN_FROM_HISTORY,
    event_stage,
    event_summary,
    stage_view,
)
from posttrain.orchestrator.shell.collector import cyclic_gc_paused
from posttrain.orchestrator.shell.read_model import RowBatch, prepare_connection, write_batch
from posttrain.service.migrate import apply_migrations

log = logging.getLogger(__name__)
T = TypeVar("T")

# What a database restart looks like to a client: the connection refused or cut, the server
# shutting down or starting up. Any other error is a bug and still ends the process.
DATABASE_UNAVAILABLE = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
)
# A transaction PostgreSQL rolled back to break a conflict with another writer (a deadlock, a
# serialization failure): nothing of it was written, and the same batch is written again.
WRITE_CONFLICT = asyncpg.TransactionRollbackError
WRITE_RETRY_FIRST_S = 0.2
WRITE_RETRY_MAX_S = 2.0
MIGRATIONS_OWNER = "orchestrator"  # its entry point in posttrain.migrations

# A first catch-up of a long log: events folded in memory before their rows are written, so
# that each pipeline they touch is written once per batch, not once per read (the default of
# ``batch_events``; a batch of the log's end is what one read returns).
BATCH_EVENTS = 100_000
READ_RECORDS = 5_000  # records one read of the consumer returns at most
GATHER_S = 5.0  # a batch stops gathering after this long: rows appear as a catch-up goes
GATHER_WAIT_MS = 100  # how long a read waits for records the last fetch said are committed
# At the log's end a batch gathers what arrives for this long after its first read: a running
# pipeline's events come a few at a time, and each batch that touches it writes its rows (and
# encodes its state) again. At a thousand agents, batches of one read each (15 a second) wrote
# each pipeline's row 11 times; the read model is this much later for it.
TAIL_WINDOW_S = 0.25
# Records (or pipelines' rows) handled between two yields to the event loop: the orchestrator,
# which shares it, goes on deciding (and heartbeating to its group) while a batch is folded. A
# yield costs microseconds, a record tens of them; at 2,000 the projection held the loop for
# 20 ms and more some ten times a second at a thousand agents, and a stage made ready meanwhile
# waited for it (fleet dispatch p99 228-261 ms at 3,000 pipelines, 189-202 ms at 20).
YIELD_EVERY = 20
# A read at least this large is a catch-up's: its batch is folded with the cyclic GC paused.
PAUSE_GC_FROM = 2_000

_LOAD_STATES = """
SELECT pipeline_id, version, state, state_offset FROM pipelines WHERE pipeline_id = ANY($1::text[])
"""

_SAVED_OFFSETS = """
SELECT partition, next_offset FROM projection_offsets WHERE projection = $1 AND topic = $2
"""


def _time(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def pipeline_rows(
    state: PipelineState, stages: Collection[str] | None = None
) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
    """The pipelines row and pipeline_stages rows of a state: of every stage, or of the named
    ``stages`` only."""
    pipeline = (
        state.pipeline_id,
        state.name,
        state.status.value,  # as pipeline_view says it
        state.submitted_by,
        _time(state.submitted_at),
        _time(state.finished_at),
        _json(state.layers),
        _json(state.errors),
        state.version,
    )
    rows = []
    for i, stage in enumerate(state.stages.values()):
        if stages is not None and stage.name not in stages:
            continue
        s = stage_view(stage)
        rows.append(
            (
                state.pipeline_id,
                s["name"],
                i,
                s["task"],
                s["status"],
                s["attempt"],
                s["command_id"],
                s["agent_id"],
                s["job_id"],
                _time(s["started_at"]),
                _time(s["finished_at"]),
                _json(s["outputs"]),
                s["error"],
                s["waiting_reason"],
                s["cached_from"],
                _json(s["attempts"]),
                state.version,
                _json(s["depends_on"]),
            )
        )
    return pipeline, rows


def history_row(
    state: PipelineState, envelope: Envelope[Any] | EnvelopeView
) -> tuple[Any, ...] | None:
    """The pipeline_history row of an event just applied to ``state`` (None: not shown)."""
    if envelope.type in HIDDEN_FROM_HISTORY:
        return None
    data = envelope.data
    stage, attempt = event_stage(data)
    return (
        state.pipeline_id,
        state.version,
        envelope.occurred_at,
        envelope.type,
        stage,
        attempt,
        event_summary(data),
        # A view (most events, read without validation) has the model's fields and values.
        _json(data.model_dump(mode="json"))
        if isinstance(data, BaseModel)
        else msgspec.json.encode(data).decode(),
        envelope.id,
    )


def agent_row(
    beat: AgentHeartbeat, *, at: datetime, partition: int, offset: int, silence_intervals: float
) -> tuple[Any, ...]:
    """The agents row of a heartbeat read at (partition, offset), sent at ``at``."""
    silent_after = (
        at if beat.stopping else at + timedelta(seconds=silence_intervals * beat.interval_s)
    )
    return (
        beat.agent_id,
        beat.host,
        _json(beat.labels),
        beat.gpus,
        beat.free_gpus,
        _json(beat.running),
        beat.interval_s,
        beat.stopping,
        at,
        silent_after,
        partition,
        offset,
        beat.slots,
    )


@dataclass(slots=True)
class _Batch:
    """What one step has folded and not yet written."""

    records: int = 0  # records read, of both topics
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> next offset
    first_offsets: dict[int, int] = field(default_factory=dict)  # partition -> first read
    agents: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # latest heartbeat each
    # Each pipeline the batch changed -> the stages whose rows changed (None: every one).
    touched: dict[str, set[str] | None] = field(default_factory=dict)
    history: list[tuple[Any, ...]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)  # every pipeline an event was about

    def forget(self, pipelines: set[str], partition: int) -> None:
        """Leave out what the batch holds of a partition about to be folded again."""
        self.offsets.pop(partition, None)
        for pid in pipelines:
            self.touched.pop(pid, None)
        self.history = [row for row in self.history if row[0] not in pipelines]
        self.seen -= pipelines


@dataclass(slots=True)
class ProjectionStats:
    """What a projection did since it was made (its own loop writes it)."""

    events: int = 0  # records of the events topic read
    # Partition -> the saved offset it resumed from at start (absent: read from the beginning).
    resumed_from: dict[int, int] = field(default_factory=dict)
    states_loaded: int = 0  # pipelines' states read back from their rows
    states_evicted: int = 0  # ended pipelines that left memory once written
    live_evicted: int = 0  # running pipelines that left memory, least recently used, once written
    events_skipped: int = 0  # events a loaded state already reflected
    refolds: int = 0  # partitions folded again from the start: a row's state was unreadable


class Projection:
    """Folds the events log and the agents topic into the read model (see the module's doc).

    ``states`` holds the pipelines of active work only: running ones, and any of a partition
    being folded again; an ended pipeline leaves it once its rows are written. With
    ``max_pipelines``, running ones beyond it leave too, least recently touched first (they
    come back from their rows as an ended one would); the bound holds between batches, a
    batch folding however many its events are about.

    ``batch_events`` caps the records a batch of a catch-up gathers (``BATCH_EVENTS``);
    ``tail_window_s``, how long one at the log's end gathers (``TAIL_WINDOW_S``)."""

    def __init__(
        self,
        settings: KafkaSettings,
        database_url: str,
        name: str = "pipelines",
        *,
        silence_intervals: float = 3.0,
        max_pipelines: int | None = None,
        batch_events: int = BATCH_EVENTS,
        tail_window_s: float = TAIL_WINDOW_S,
    ) -> None:
        self.settings = settings
        self.database_url = database_url
        self.name = name
        self.silence_intervals = silence_intervals
        self.max_pipelines = max_pipelines
        self.batch_events = batch_events
        self.tail_window_s = tail_window_s
        self.states: dict[str, PipelineState] = {}
        self.stats = ProjectionStats()
        # Each held pipeline's partition and the offset of the last event applied to its state.
        self._applied: dict[str, tuple[int, int]] = {}
        self._views = ViewDecoder()  # the fold only reads fields: views skip model validation
        # Partitions folded again from the start -> the offset their rows already reflect: until
        # there, no state is loaded from rows, none leaves memory and no position is saved.
        self._refolding: dict[int, int] = {}
        self._pool: asyncpg.Pool | None = None
        self._topic = settings.topic(Topic.PIPELINE_EVENTS)
        self._agents_topic = settings.topic(Topic.AGENTS)
        self._event_partitions = [
            TopicPartition(self._topic, p) for p in range(TOPICS[Topic.PIPELINE_EVENTS].partitions)
        ]
        self._consumer = AIOKafkaConsumer(
            **settings.client_options(),
            client_id=f"{settings.client_id}-projection",
            enable_auto_commit=False,
            isolation_level="read_committed",
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )

    async def start(self) -> None:
        """Apply the read model's migrations, then read the events topic from the saved offsets
        (the beginning where none is saved) and the agents topic in full."""
        # The read model's tables are the orchestrator's: it applies its own migrations.
        await asyncio.wait_for(apply_migrations(self.database_url, owner=MIGRATIONS_OWNER), 30)
        self._pool = await asyncpg.create_pool(
            self.database_url, min_size=1, max_size=2, init=prepare_connection
        )
        async with self._pool.acquire() as conn:
            saved = {
                r["partition"]: r["next_offset"]
                for r in await conn.fetch(_SAVED_OFFSETS, self.name, self._topic)
            }
        await self._consumer.start()
        tps = [
            TopicPartition(self.settings.topic(topic), p)
            for topic in (Topic.PIPELINE_EVENTS, Topic.AGENTS)
            for p in range(TOPICS[topic].partitions)
        ]
        self._consumer.assign(tps)
        resumed = [tp for tp in tps if tp.topic == self._topic and tp.partition in saved]
        for tp in resumed:
            self._consumer.seek(tp, saved[tp.partition])
            self.stats.resumed_from[tp.partition] = saved[tp.partition]
        from_start = [tp for tp in tps if tp not in resumed]
        if from_start:
            await self._consumer.seek_to_beginning(*from_start)

    async def stop(self) -> None:
        await self._consumer.stop()
        if self._pool is not None:
            await self._pool.close()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self.step()
        finally:
            await self.stop()

    async def step(self, timeout_ms: int = 200) -> int:
        """Read one batch, fold it and write it in one transaction; the records read.

        Behind the log's end (a first catch-up, a restart after a long stop), a batch goes on
        reading and folding while committed records are waiting, up to ``batch_events`` records
        or ``GATHER_S``, before anything is written, so that a pipeline touched many times in it
        is written once; at the end, a batch is what arrives within ``tail_window_s`` of its
        first read. Records are folded as they are read: a batch holds their rows, not their
        messages."""
        got = await self._consumer.getmany(
            timeout_ms=timeout_ms, max_records=min(READ_RECORDS, self.batch_events)
        )
        batch = _Batch()
        large = sum(len(r) for r in got.values()) >= PAUSE_GC_FROM
        with cyclic_gc_paused() if large else contextlib.nullcontext():
            began = time.monotonic()
            while got:
                await self._fold(got, batch)
                now = time.monotonic()
                if batch.records >= self.batch_events or now > began + GATHER_S:
                    break
                if await self._committed_waiting():
                    wait_ms = GATHER_WAIT_MS  # behind the log's end: read on
                elif (tail_left := began + self.tail_window_s - now) > 0:
                    wait_ms = max(1, round(tail_left * 1000))  # at its end: what comes soon
                else:
                    break
                got = await self._consumer.getmany(
                    timeout_ms=wait_ms,
                    max_records=min(READ_RECORDS, self.batch_events - batch.records),
                )
            await self._finish(batch)
        return batch.records

    async def _fold(self, got: dict[TopicPartition, list[Any]], batch: _Batch) -> None:
        """Fold the records of one read into ``batch``: states, history rows, offsets."""
        events: list[tuple[int, int, EnvelopeView | Envelope[Any]]] = []  # partition, offset
        for tp, records in got.items():
            is_agents = tp.topic == self._agents_topic
            for record in records:
                batch.records += 1
                if batch.records % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # the orchestrator shares this event loop
                if not is_agents:
                    batch.offsets[tp.partition] = record.offset + 1
                    batch.first_offsets.setdefault(tp.partition, record.offset)
                    self.stats.events += 1
                try:
                    # Heartbeats as models (agent_row takes one; they are few); events as views.
                    envelope = (
                        decode(record.value, record.headers)
                        if is_agents
                        else self._views.decode(record.value, record.headers)
                    )
                except DecodeError as exc:
                    log.error("unreadable message skipped by the projection: %s", exc)
                    continue
                if not is_agents:
                    events.append((tp.partition, record.offset, envelope))
                elif isinstance(envelope.data, AgentHeartbeat):
                    batch.agents[envelope.data.agent_id] = agent_row(
                        envelope.data,
                        at=datetime.fromtimestamp(record.timestamp / 1000, UTC),
                        partition=tp.partition,
                        offset=record.offset,
                        silence_intervals=self.silence_intervals,
                    )
        for p in await self._load(events):
            # Nothing of this partition's batch is applied: the refold reads it again, and its
            # rows reflect every event before the batch's first of it.
            batch.forget({pid for pid, (q, _) in self._applied.items() if q == p}, p)
            await self._refold(p, batch.first_offsets.pop(p))
            events = [e for e in events if e[0] != p]
        for i, (p, offset, envelope) in enumerate(events):
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
            pid = envelope.data.pipeline_id
            batch.seen.add(pid)
            applied = self._applied.get(pid)
            if applied is not None and offset <= applied[1]:
                self.stats.events_skipped += 1  # its state (loaded from its row) has it
                continue
            # Popped and put back: the dict's order is the order of use (the LRU bound's).
            state = self.states.pop(pid, None) or PipelineState(pid)
            self.states[pid] = state
            apply(state, envelope)
            self._applied[pid] = (p, offset)
            # An event that names a stage changes that stage alone (every mutator of core.state
            # does): a pipeline's other stages keep the rows they have.
            stage = getattr(envelope.data, "stage", None)
            if not isinstance(stage, str):
                batch.touched[pid] = None
            elif (changed := batch.touched.setdefault(pid, set())) is not None:
                changed.add(stage)
            row = history_row(state, envelope)
            if row is not None:
                batch.history.append(row)

    async def _finish(self, batch: _Batch) -> None:
        """Write the batch's rows and offsets in one transaction; then ended pipelines leave."""
        offsets = batch.offsets
        refolded = []
        for p, until in list(self._refolding.items()):
            if p in offsets and offsets[p] >= until:
                refolded.append(p)
                del self._refolding[p]
            else:
                offsets.pop(p, None)  # never save a position before the rows' own
        rows = await self._rows(batch.touched, batch.history, batch.agents, offsets)
        if rows:
            await self._until_available(lambda: self._write(rows))
        # Every pipeline of the batch, also one loaded whose events it already reflected.
        self._evict(batch.seen, refolded)

    async def _committed_waiting(self) -> bool:
        """Whether the last fetches saw committed events beyond what was read (no broker
        request: the offsets the fetch responses carried)."""
        for tp in self._event_partitions:
            stable = self._consumer.last_stable_offset(tp)
            end = stable if stable is not None and stable >= 0 else self._consumer.highwater(tp)
            if end is not None and end > await self._consumer.position(tp):
                return True
        return False

    async def behind(self) -> int:
        """How many records of the events topic are still to read (0: caught up)."""
        ends = await self._consumer.end_offsets(self._event_partitions)
        left = 0
        for tp in self._event_partitions:
            left += max(0, ends[tp] - await self._consumer.position(tp))
        return left

    async def _load(self, events: list[tuple[int, int, EnvelopeView | Envelope[Any]]]) -> set[int]:
        """Load from their rows the states of the pipelines these events are about that are
        not in memory; the partitions where a row's state cannot be read."""
        wanted = {
            e.data.pipeline_id: p
            for p, _, e in events
            if p not in self._refolding and e.data.pipeline_id not in self.states
        }
        if not wanted:
            return set()
        rows = await self._until_available(lambda: self._fetch(_LOAD_STATES, list(wanted)))
        unusable: set[int] = set()
        for row in rows:
            pid, p = row["pipeline_id"], wanted[row["pipeline_id"]]
            try:
                if row["state"] is None or row["state_offset"] is None:
                    raise SnapshotUnusable("its row was written before rows held states")
                state = decode_archived(row["state"])
                if state.pipeline_id != pid or state.version != row["version"]:
                    raise SnapshotUnusable(f"it is not version {row['version']} of {pid}")
            except SnapshotUnusable as exc:
                log.warning(
                    "projection: the state of %s cannot be read (%s): folding partition %s "
                    "again from the start",
                    pid,
                    exc,
                    p,
                )
                unusable.add(p)
                continue
            self.states[pid] = state
            self._applied[pid] = (p, row["state_offset"])
            self.stats.states_loaded += 1
        return unusable

    async def _refold(self, p: int, until: int) -> None:
        """Fold partition ``p`` again from the log's start, its rows reflecting every event
        before ``until``: its states are forgotten and rebuilt from the events alone."""
        for pid in [pid for pid, (q, _) in self._applied.items() if q == p]:
            self._forget(pid)
        self._refolding[p] = max(until, self._refolding.get(p, 0))
        self.stats.refolds += 1
        await self._consumer.seek_to_beginning(TopicPartition(self._topic, p))

    def _evict(self, seen: set[str], refolded: list[int]) -> None:
        """Ended pipelines (their rows now written) leave memory, except in a partition being
        folded again; a partition whose refold is done lets all of its ended ones go."""
        candidates = [pid for pid, (p, _) in self._applied.items() if p in refolded]
        candidates += [
            pid
            for pid in seen
            if pid in self._applied and self._applied[pid][0] not in self._refolding
        ]
        for pid in candidates:
            state = self.states.get(pid)
            if state is not None and archivable(state):
                self._forget(pid)
                self.stats.states_evicted += 1
        if self.max_pipelines is None or len(self.states) <= self.max_pipelines:
            return
        for pid in list(self.states):  # least recently touched first
            if len(self.states) <= self.max_pipelines:
                break
            state = self.states[pid]
            # A state with no rows yet (nothing to load it back from) stays, as does any of a
            # partition being folded again.
            if (state.stages or state.errors) and self._applied[pid][0] not in self._refolding:
                self._forget(pid)
                self.stats.live_evicted += 1

    def _forget(self, pid: str) -> None:
        self.states.pop(pid, None)
        del self._applied[pid]

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            return list(await conn.fetch(query, *args))

    async def _until_available(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()``, again after each connection failure until the database is back, and
        after each transaction the server rolled back to break a conflict.

        The read model is not the orchestrator's source of truth: a database that restarts must
        not end the process that runs the pipelines (it did: the write's ConnectionRefusedError
        ended ``serve``). The batch's records are already consumed, so it is kept and written
        whole, in one transaction, once the server answers; the read model lags meanwhile."""
        delay = WRITE_RETRY_FIRST_S
        while True:
            try:
                return await attempt()
            except DATABASE_UNAVAILABLE as exc:
                log.warning("projection: the database is unavailable (%r); retrying", exc)
            except WRITE_CONFLICT as exc:
                log.warning("projection: the write was rolled back (%r); retrying", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, WRITE_RETRY_MAX_S)

    async def _rows(
        self,
        touched: dict[str, set[str] | None],
        history: list[tuple[Any, ...]],
        agents: dict[str, tuple[Any, ...]],
        offsets: dict[int, int],
    ) -> RowBatch:
        """The batch's rows: each touched pipeline's once, with the rows of its changed stages."""
        batch = RowBatch(
            history=history,
            agents=list(agents.values()),
            offsets=[(self.name, self._topic, p, o) for p, o in offsets.items()],
        )
        for i, (pid, stages) in enumerate(touched.items()):
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
            state = self.states[pid]
            if not state.stages and not state.errors:
                continue
            row, stage_rows = pipeline_rows(state, stages)
            batch.pipelines.append((*row, encode_archived(state), self._applied[pid][1]))
            batch.stages.extend(stage_rows)
        return batch

    async def _write(self, batch: RowBatch) -> None:
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            await write_batch(conn, batch)
