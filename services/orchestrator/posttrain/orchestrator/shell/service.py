"""The orchestrator service: consume commands and reports, decide, and commit the new events,
the agent commands and the consumed offsets in one Kafka transaction per partition batch.

Partitions are owned through a consumer group. On being assigned partition p, an instance
first fences any previous owner (a transactional producer ``orchestrator-p<p>``: initialising it
aborts the predecessor's open transaction) and then replays p of the event log up to its end,
from p's latest snapshot on when there is one (``shell.snapshots``): from then on its state for p
is exactly what the log says. Snapshots are written in the transactions of the events they cover,
and ended pipelines leave memory with them, to come back when a message is about them. Crashing
at any point loses nothing and repeats nothing visible: an uncommitted decision is aborted with
its offsets, and the input is decided again on the rebuilt state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import ChainMap, Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from posttrain.events import DecodeError, Envelope, decode, encode
from posttrain.events.kafka import EventProducer, KafkaSettings
from posttrain.events.kafka.dlq import DeadLetters
from posttrain.events.kafka.producer import Encoded, SentBatch
from posttrain.events.messages import StageOutputsCached, TickClock
from posttrain.events.topics import SNAPSHOT_MAX_BYTES, TOPICS, Topic
from posttrain.orchestrator.core.decide import (
    CacheEntry,
    Context,
    Decision,
    cache_entries,
    decide,
    tick_due,
)
from posttrain.orchestrator.core.snapshot import SnapshotUnusable
from posttrain.orchestrator.core.state import ACTIVE, Attempt, PipelineState, StageStatus
from posttrain.orchestrator.shell.agents import AgentTable
from posttrain.orchestrator.shell.replay import (
    DEFAULT_PARALLEL_FROM,
    ReplayHelpers,
    replay_partitions,
)
from posttrain.orchestrator.shell.snapshots import (
    PartitionBook,
    SnapshotPolicy,
    replay_from_snapshots,
    restore,
    snapshots_topic,
    write_snapshot,
)
from posttrain.orchestrator.shell.stage_cache import StageCacheTable
from posttrain.orchestrator.shell.stats import OrchestratorStats

log = logging.getLogger(__name__)

GROUP = "orchestrator"
INPUTS = (Topic.PIPELINE_COMMANDS, Topic.STAGE_REPORTS)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: Orchestrator) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        pass  # kept until the new assignment says otherwise: see on_partitions_assigned

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.owner._assign({tp.partition for tp in assigned})


@dataclass(slots=True)
class Outbox:
    """What one transaction's decisions send, encoded as they are decided and handed to the
    producer at the end as record batches (a client ``send`` per message cost more than the
    decision that made it). Only the bytes and a tally are kept: holding every decision's
    envelopes to the end of a batch of a thousand records made them outlive the young
    generations of the cyclic GC, and its full collections came more often."""

    events: list[Encoded] = field(default_factory=list)
    commands: dict[Topic, list[Encoded]] = field(default_factory=dict)
    decisions: int = 0
    command_types: Counter[str] = field(default_factory=Counter)

    def add(self, decision: Decision) -> None:
        self.decisions += 1
        self.events.extend(encode(envelope) for envelope in decision.events)
        for topic, envelope in decision.commands:
            self.commands.setdefault(topic, []).append(encode(envelope))
            self.command_types[envelope.type] += 1

    async def send(
        self, settings: KafkaSettings, producer: EventProducer, p: int
    ) -> tuple[SentBatch | None, list[SentBatch]]:
        """Hand everything to the producer's open transaction: the last batch of events (its
        end is where the log now ends; None if there were none) and every batch handed over."""
        # Co-partitioned: the pipelines' events go to the partition their input came from;
        # commands to their key's partition, in the order decided. In sequence, not gathered:
        # see ``EventProducer.send_batches``.
        events = await producer.send_batches(Topic.PIPELINE_EVENTS, self.events, partition=p)
        sent = list(events)
        for topic, records in self.commands.items():
            sent.extend(await producer.send_batches(topic, records))
        return (events[-1] if events else None), sent


class Orchestrator:
    def __init__(
        self,
        settings: KafkaSettings,
        *,
        tick_interval_s: float = 1.0,
        silence_intervals: float = 3.0,
        session_timeout_ms: int = 6000,
        replay_processes: int = 0,
        replay_parallel_from: int = DEFAULT_PARALLEL_FROM,
        snapshots: SnapshotPolicy | None = SnapshotPolicy(),  # noqa: B008 (frozen)
        instance_id: str | None = None,
        helpers: ReplayHelpers | None = None,
    ) -> None:
        """``instance_id``: this instance's stable identity in its consumer group (static
        membership, KIP-345). Restarted under the same identity, it takes its partitions back
        at once instead of after the session timeout: fencing by transactional id keeps that
        safe. An instance with an identity does not leave the group when it stops: its
        partitions wait for it to come back, or move after the session timeout. None: a
        dynamic member, which leaves the group on a clean stop.

        ``helpers``: replay helpers started already (by the process entry, before the event
        loop: forked); without them, ``replay_processes`` helpers start with the first replay
        that needs them."""
        self.settings = settings
        # None: no snapshots, every assignment folds the partitions' whole log, as before.
        self.snapshots = snapshots
        self._books: dict[int, PartitionBook] = {}
        self._distrusted: set[int] = set()  # partitions whose next replay folds the whole log
        self.instance_id = instance_id
        self._replay_processes = replay_processes
        self._replay_parallel_from = replay_parallel_from
        self._helpers = helpers
        self.tick_interval_s = tick_interval_s
        self._group = settings.group(GROUP)
        self._agents = AgentTable(settings, silence_intervals=silence_intervals)
        self._consumer = AIOKafkaConsumer(
            **settings.client_options(),
            client_id=f"{settings.client_id}-orchestrator",
            group_id=self._group,
            group_instance_id=instance_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=max(session_timeout_ms // 3, 100),
        )
        self._producers: dict[int, EventProducer] = {}
        self.states: dict[int, dict[str, PipelineState]] = {}
        self._cache: dict[str, CacheEntry] = {}  # what the owned partitions' pipelines made
        self._stage_cache = StageCacheTable(settings)  # what every instance's made
        # By partition: (pipeline, key, entry) to send in that partition's next transaction.
        self._cache_out: dict[int, list[tuple[str, str, CacheEntry]]] = {}
        self._publish_cache = True
        self._last_tick = 0.0
        self._lock = asyncio.Lock()
        self.stats = OrchestratorStats()

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._helpers is None and self._replay_processes > 0:
            self._helpers = ReplayHelpers(
                self._replay_processes, min_events=self._replay_parallel_from
            )
        await self._agents.start()
        await self._stage_cache.start()
        await self._consumer.start()
        topics = await self._consumer.topics()
        if self.settings.topic(Topic.STAGE_CACHE) not in topics:
            log.warning(
                "no topic %s: stage cache entries stay with their partitions",
                self.settings.topic(Topic.STAGE_CACHE),
            )
            self._publish_cache = False
        if self.snapshots is not None:
            topic = snapshots_topic(self.settings)
            if topic not in topics:
                # Created by `posttrain stack up` and the deploy manifests; an older broker
                # setup without it runs on, folding the whole log at each assignment.
                log.warning("no topic %s: running without snapshots", topic)
                self.snapshots = None
        self._consumer.subscribe(
            [self.settings.topic(t) for t in INPUTS], listener=_Rebalance(self)
        )

    async def stop(self) -> None:
        await self._consumer.stop()
        for producer in self._producers.values():
            await producer.stop()
        await self._agents.stop()
        await self._stage_cache.stop()
        if self._helpers is not None:
            self._helpers.close()

    @property
    def partitions(self) -> list[int]:
        """The partitions this instance owns (fenced, and replayed or being replayed)."""
        return sorted(self._producers)

    async def run(self, stop: asyncio.Event) -> None:
        self.stats.running = True
        self.stats.last_poll_at = time.monotonic()  # starting counts as a poll: none is late yet
        try:
            while not stop.is_set():
                await self.step(timeout_ms=int(self.tick_interval_s * 500))
        finally:
            self.stats.running = False

    async def step(self, timeout_ms: int = 500) -> None:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=1000)
        self.stats.last_poll_at = time.monotonic()
        async with self._lock:
            by_partition: dict[int, list[Any]] = {}
            for tp, records in batches.items():
                if tp.partition not in self._producers:
                    # Fetched before the assignment listener finished fencing and replaying
                    # this partition: read it again once we own it.
                    self._consumer.seek(tp, records[0].offset)
                    continue
                by_partition.setdefault(tp.partition, []).extend(records)
            # Each partition commits in a transaction of its own producer: the partitions'
            # round trips to the transaction coordinator overlap instead of adding up (a stage
            # made ready on the last partition waited for every other partition's commit).
            await asyncio.gather(*(self._process(p, rs) for p, rs in by_partition.items()))
            now = time.time()
            if now - self._last_tick >= self.tick_interval_s:
                self._last_tick = now
                await self._tick(now)

    # --- ownership ----------------------------------------------------------------------------

    async def _assign(self, partitions: set[int]) -> None:
        # The group coordinator calls this from its own task: never interleave with a batch.
        async with self._lock:
            await self._assign_locked(partitions)

    async def _assign_locked(self, partitions: set[int]) -> None:
        log.info(
            "orchestrator given partitions %s",
            sorted(partitions),
            extra={"partitions": sorted(partitions)},
        )
        for p in set(self._producers) - partitions:
            await self._producers.pop(p).stop()
            self._drop(p)
        new = sorted(partitions - set(self._producers))
        # All at once: each fence is a few round trips to the transaction coordinator, and a
        # restart waits for the last one before it decides anything.
        await asyncio.gather(*(self._fence(p) for p in new))
        await self._rebuild(new)
        self._agents.own(frozenset(self._producers))
        self.stats.assigned = True
        log.info(
            "orchestrator owns partitions %s",
            self.partitions,
            extra={"partitions": self.partitions},
        )

    async def _fence(self, p: int) -> None:
        producer = self._producer(p)
        await producer.start()
        # Fence the previous owner: initialising our transactional id aborts its open
        # transaction before we read the log's end.
        await producer.client.begin_transaction()
        await producer.client.abort_transaction()
        self._producers[p] = producer

    def _producer(self, p: int) -> EventProducer:
        return EventProducer(
            self.settings,
            transactional_id=f"orchestrator-p{p}",
            linger_ms=0,
            max_request_size=SNAPSHOT_MAX_BYTES + 1024 * 1024,
        )

    def _drop(self, p: int) -> None:
        self._books.pop(p, None)
        self._cache_out.pop(p, None)
        for state in self.states.pop(p, {}).values():
            for stage in state.stages.values():
                if stage.current is not None:
                    self._agents.release(stage.current.command_id)

    async def _rebuild(self, partitions: Sequence[int]) -> None:
        for p in partitions:
            self._drop(p)
        if not partitions:
            return
        started = time.monotonic()
        shares_before = self._helpers.shares_folded if self._helpers is not None else 0
        self.stats.replaying = True
        try:
            states, count = await self._replay(partitions)
        finally:
            self.stats.replaying = False
        seconds = time.monotonic() - started
        self.stats.replayed(count, seconds)
        log.info(
            "replayed %d events of partitions %s",
            count,
            list(partitions),
            extra={
                "events": count,
                "partitions": list(partitions),
                "seconds": round(seconds, 3),
                "helper_shares": (
                    self._helpers.shares_folded - shares_before if self._helpers is not None else 0
                ),
            },
        )
        for p, by_pipeline in states.items():
            self.states[p] = by_pipeline
            for state in by_pipeline.values():
                self._index(p, state)
        for p in partitions:
            self._cache_out.pop(p, None)  # sent when they were made

    async def _replay(
        self, partitions: Sequence[int]
    ) -> tuple[dict[int, dict[str, PipelineState]], int]:
        """The partitions' states: from their latest snapshots and the events after them, or
        from their whole log where a snapshot is missing or unusable."""
        if self.snapshots is None:
            for p in partitions:
                self._books[p] = PartitionBook()
            return await replay_partitions(self.settings, partitions, self._helpers)
        distrusted, self._distrusted = self._distrusted, set()
        replayed = await replay_from_snapshots(
            self.settings, partitions, distrusted=distrusted, helpers=self._helpers
        )
        self._books.update(replayed.books)
        for book in replayed.books.values():
            self._cache.update(book.cache)
        self.stats.snapshots_loaded += replayed.loaded
        self.stats.snapshots_unusable += replayed.unusable
        return replayed.states, replayed.events

    async def _restore(
        self, p: int, pid: str, states: dict[str, PipelineState], book: PartitionBook
    ) -> None:
        """Bring an archived pipeline back into memory; if its record cannot be read, the
        partition's state is rebuilt from its whole log (the transaction aborts, and
        ``_recover`` replays it without its snapshot)."""
        try:
            restored = await restore(self.settings, p, [pid], states, book.archived)
        except SnapshotUnusable as exc:
            log.warning(
                "the archived state of %s is unusable (%s): partition %s folds its whole log",
                pid,
                exc,
                p,
                extra={"pipeline_id": pid, "partition": p, "reason": str(exc)},
            )
            self.stats.snapshots_unusable += 1
            self._distrusted.add(p)
            raise
        for state in restored:
            self._index(p, state)
            self.stats.pipelines_restored += 1

    def _index(self, p: int, state: PipelineState) -> None:
        """Keep the reservations and the cache in step with a pipeline's state (of partition
        ``p``: its new cache entries go out in that partition's transaction)."""
        for stage in state.stages.values():
            current = stage.current
            for run in stage.attempts.values():
                if run is current and stage.status in ACTIVE:
                    self._agents.reserve(run.agent_id, run.command_id, stage.spec.resources.gpus)
                else:
                    self._agents.release(run.command_id, ended=_reported_ended(run))
        for entry in cache_entries(state):
            if self._cache.get(entry.key) != entry.entry:
                self._cache[entry.key] = entry.entry
                out = self._cache_out.setdefault(p, [])
                out.append((state.pipeline_id, entry.key, entry.entry))

    def _context(self, now: float) -> Context:
        # This instance's entries first: they are current before the topic brings them back.
        cache = ChainMap(self._cache, self._stage_cache.entries)
        return Context(agents=self._agents.views(now), cache=cache)

    # --- deciding -----------------------------------------------------------------------------

    async def _process(self, p: int, records: list[Any]) -> None:
        producer = self._producers[p]
        states = self.states.setdefault(p, {})
        dead = 0
        book = self._books.get(p)
        outbox = Outbox()
        try:
            async with producer.client.transaction():
                offsets: dict[TopicPartition, int] = {}
                for record in records:
                    offsets[TopicPartition(record.topic, record.partition)] = record.offset + 1
                    try:
                        envelope = decode(record.value, record.headers)
                        pid = envelope.data.pipeline_id
                    except (DecodeError, AttributeError) as exc:
                        reason = exc.reason if isinstance(exc, DecodeError) else "invalid"
                        dlq = DeadLetters.in_transaction(producer, "orchestrator")
                        await dlq.park(record, reason, str(exc))
                        dead += 1
                        continue
                    if book is not None and pid in book.archived and pid not in states:
                        await self._restore(p, pid, states, book)
                    state = states.get(pid) or PipelineState(pid)
                    if not state.stages and envelope.type != "SubmitPipeline":
                        log.info("%s for unknown pipeline %s ignored", envelope.type, pid)
                    decision = decide(state, envelope, self._context(time.time()))
                    if decision:
                        states[pid] = state
                        # Reservations follow each decision at once: the next one in this
                        # batch places stages with them (an abort rebuilds them from the log).
                        self._index(p, state)
                        outbox.add(decision)
                last = await self._append(p, producer, outbox)
                await producer.client.send_offsets_to_transaction(offsets, self._group)
        except Exception:
            self.stats.transactions_aborted += 1
            log.exception("transaction on partition %s failed: rebuilding it from the log", p)
            await self._recover(p)
        else:
            self._appended(p, last)
            self.stats.sent(
                len(outbox.events), outbox.command_types, records=len(records), dead=dead
            )

    async def _tick(self, now: float) -> None:
        silent = frozenset(self._agents.silent(now))
        # As with batches: each partition's transaction on its own producer, all at once.
        await asyncio.gather(*(self._tick_partition(p, now, silent) for p in list(self.states)))

    async def _tick_partition(self, p: int, now: float, silent: frozenset[str]) -> None:
        states = self.states.get(p)
        producer = self._producers.get(p)
        if states is None or producer is None:
            return
        due = [s for s in states.values() if tick_due(s, now, silent)]
        if not due:
            await self._idle_snapshot(p, producer)
            return
        try:
            outbox = Outbox()
            for state in due:
                tick = Envelope(
                    id=f"tick:{state.pipeline_id}:{now:.6f}",
                    occurred_at=datetime.fromtimestamp(now, UTC),
                    key=state.pipeline_id,
                    data=TickClock(
                        pipeline_id=state.pipeline_id, now=now, silent_agents=sorted(silent)
                    ),
                )
                decision = decide(state, tick, self._context(now))
                if decision:
                    outbox.add(decision)
                    self._index(p, state)
            if not outbox.decisions:
                await self._idle_snapshot(p, producer)
                return
            async with producer.client.transaction():
                last = await self._append(p, producer, outbox)
        except Exception:
            self.stats.transactions_aborted += 1
            log.exception("tick on partition %s failed: rebuilding it from the log", p)
            await self._recover(p)
        else:
            self._appended(p, last)
            self.stats.sent(len(outbox.events), outbox.command_types)

    async def _append(self, p: int, producer: EventProducer, outbox: Outbox) -> SentBatch | None:
        """In the producer's open transaction on partition ``p``: the outbox's events and
        commands, the cache entries its decisions made and a snapshot if one is due; returns
        the last batch of events (None if there were none).

        Every record is acknowledged before anything else joins the transaction (the snapshot's
        partition, the consumer's offsets). The broker checks each transactional write with the
        transaction coordinator, and a write it checks while the coordinator is adding to the
        transaction is refused as retriable; the client then waits its retry backoff, which was
        the largest share of the time from a stage's report to the next RunStage at a thousand
        agents."""
        last, sent = await outbox.send(self.settings, producer, p)
        acks = [batch.future for batch in sent]
        acks += await self._send_cache_entries(p, producer)
        await asyncio.gather(*acks)
        await self._snapshot(p, producer, last, len(outbox.events))
        return last

    async def _send_cache_entries(
        self, p: int, producer: EventProducer
    ) -> list[asyncio.Future[Any]]:
        """The cache entries the transaction's decisions (on partition ``p``) made, for every
        instance; the futures of their acknowledgements."""
        out = self._cache_out.pop(p, [])
        if not self._publish_cache:
            return []
        acks = []
        topic = self.settings.topic(Topic.STAGE_CACHE)
        for pid, key, entry in out:
            made = StageOutputsCached(
                cache_key=key,
                pipeline_id=pid,
                command_id=entry.command_id,
                outputs=dict(entry.outputs),
            )
            key_bytes, value, headers = encode(Envelope.create(made, key=key))
            acks.append(
                await producer.client.send(topic, key=key_bytes, value=value, headers=headers)
            )
        return acks

    # --- snapshots ----------------------------------------------------------------------------

    def _appended(self, p: int, last: SentBatch | None) -> None:
        """A transaction that appended events up to ``last`` (a sent batch) committed."""
        book = self._books.get(p)
        if book is not None and last is not None:
            book.events_end = last.end()

    async def _snapshot(
        self, p: int, producer: EventProducer, last: SentBatch | None, events: int
    ) -> None:
        """In the open transaction that appended ``events`` events (the last batch of them is
        ``last``, acknowledged): write the partition's snapshot if one is due, so that it and
        the offset it stands for commit or abort together with those events."""
        book = self._books.get(p)
        if self.snapshots is None or book is None or last is None:
            return
        book.events_since += events
        if book.due(self.snapshots, time.monotonic()):
            await self._write_snapshot(p, producer, last.end())

    async def _idle_snapshot(self, p: int, producer: EventProducer) -> None:
        """Between decisions: a snapshot in a transaction of its own when one is due by time,
        or when ended pipelines wait to leave memory (a quiet partition, or a replay of a log
        without snapshots)."""
        book = self._books.get(p)
        if self.snapshots is None or book is None:
            return
        if not book.idle_due(self.snapshots, time.monotonic(), self.states.get(p, {}).values()):
            return
        try:
            async with producer.client.transaction():
                await self._write_snapshot(p, producer, book.events_end)
        except Exception:
            self.stats.transactions_aborted += 1
            log.exception("snapshot of partition %s failed: rebuilding it from the log", p)
            await self._recover(p)

    async def _write_snapshot(self, p: int, producer: EventProducer, events_offset: int) -> None:
        archived = await write_snapshot(
            self.settings,
            producer.client,
            p,
            self.states.setdefault(p, {}),
            self._books[p],
            events_offset,
        )
        self.stats.snapshots_written += 1
        self.stats.pipelines_archived += archived

    async def _recover(self, p: int) -> None:
        """After an aborted transaction: the in-memory state ran ahead of the log; rebuild it
        and read the input again from the committed offsets."""
        producer = self._producers.get(p)
        if producer is not None:
            await producer.stop()
            producer = self._producer(p)
            await producer.start()
            self._producers[p] = producer
        await self._rebuild([p])
        for topic in INPUTS:
            tp = TopicPartition(self.settings.topic(topic), p)
            committed = await self._consumer.committed(tp)
            if committed is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)


def _reported_ended(run: Attempt) -> bool:
    """Whether the agent reported the attempt's end (so it no longer holds a slot there): a
    timeout or a cancel is decided here, while the agent may still be stopping the stage."""
    if run.status == StageStatus.SUCCEEDED:
        return True
    return run.status == StageStatus.FAILED and run.failure_kind != "timeout"


def expected_partitions() -> int:
    return TOPICS[Topic.PIPELINE_EVENTS].partitions
