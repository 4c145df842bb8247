"""The snapshots topic on Kafka: reading a partition's latest snapshot and folding the events after
it, reading an archived pipeline back, and what the orchestrator keeps per partition to write
the next snapshot (``core.snapshot`` has the format).

Partition p of the snapshots topic holds the snapshots of partition p of the events topic. Every
transaction that writes to it ends with the partition's snapshot (archived pipelines' records,
if any, come before it), so the latest snapshot is the last committed record of the partition:
it is found by reading back from the end, never by reading the partition whole (which holds a
record per archived pipeline).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer, TopicPartition

from posttrain.events import DecodeError
from posttrain.events.kafka import KafkaSettings
from posttrain.events.kafka.logreader import log_bounds, read_partitions
from posttrain.events.topics import Topic
from posttrain.events.views import ViewDecoder
from posttrain.orchestrator.core.decide import CacheEntry
from posttrain.orchestrator.core.snapshot import (
    PARTITION,
    PartitionSnapshot,
    SnapshotUnusable,
    archivable,
    cache_of,
    decode_archived,
    decode_partition,
    encode_archived,
    encode_partition,
    kind,
    pipelines_to_restore,
)
from posttrain.orchestrator.core.state import PipelineState, fold
from posttrain.orchestrator.shell.replay import ReplayHelpers, replay_partitions

log = logging.getLogger(__name__)

# How far back from the end the latest snapshot is looked for first (records, markers included):
# the last transaction usually holds it with a few archived pipelines. Doubled until found.
_FIRST_WINDOW = 64
DEFAULT_EVERY_EVENTS = 2000
DEFAULT_EVERY_S = 10.0


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """When the orchestrator writes a partition's snapshot: in a transaction that appends events,
    once ``every_events`` events were appended since the last one, or ``every_s`` seconds went
    by with any. Ended pipelines leave memory at each snapshot, all of them: the snapshot then
    holds the running ones only (after a fold of a long log without snapshots, that first
    transaction archives thousands of pipelines, once)."""

    every_events: int = DEFAULT_EVERY_EVENTS
    every_s: float = DEFAULT_EVERY_S


@dataclass(slots=True)
class PartitionBook:
    """What an owned partition's next snapshot needs beyond the pipelines in memory."""

    archived: dict[str, int] = field(default_factory=dict)  # pipeline id -> record offset
    cache: dict[str, CacheEntry] = field(default_factory=dict)  # of the archived pipelines
    events_end: int = 0  # the events partition's end: all before it is in memory
    events_since: int = 0  # appended since the last snapshot
    last_at: float = field(default_factory=time.monotonic)

    def due(self, policy: SnapshotPolicy, now: float) -> bool:
        return self.events_since >= policy.every_events or (
            self.events_since > 0 and now - self.last_at >= policy.every_s
        )

    def idle_due(self, policy: SnapshotPolicy, now: float, states: Iterable[PipelineState]) -> bool:
        """Between decisions: due by time, or ended pipelines wait to leave memory (a quiet
        partition, or a replay of a log without snapshots)."""
        return self.due(policy, now) or (
            now - self.last_at >= policy.every_s and any(archivable(s) for s in states)
        )


async def write_snapshot(
    settings: KafkaSettings,
    client: AIOKafkaProducer,
    partition: int,
    states: dict[str, PipelineState],
    book: PartitionBook,
    events_offset: int,
) -> int:
    """In the producer's open transaction: archive the partition's ended pipelines (each a
    record; out of ``states`` now), then write its snapshot standing for ``events_offset``, the
    last record of the transaction on that partition. Returns the pipelines archived."""
    topic = snapshots_topic(settings)
    ended = [s for s in states.values() if archivable(s)]
    sends = [
        await client.send(
            topic,
            key=f"pipeline/{s.pipeline_id}".encode(),
            value=encode_archived(s),
            partition=partition,
        )
        for s in ended
    ]
    for state, sent in zip(ended, sends, strict=True):
        book.archived[state.pipeline_id] = (await sent).offset
        del states[state.pipeline_id]
    book.cache.update(cache_of(ended))
    snapshot = PartitionSnapshot(
        partition=partition,
        events_offset=events_offset,
        states=states,
        archived=book.archived,
        cache=book.cache,
    )
    value = encode_partition(snapshot)  # now: the states change once the transaction is over
    # Acknowledged before the transaction goes on (see ``Orchestrator._append``).
    await (await client.send(topic, key=f"p{partition}".encode(), value=value, partition=partition))
    book.events_end = events_offset
    book.events_since = 0
    book.last_at = time.monotonic()
    return len(ended)


def snapshots_topic(settings: KafkaSettings) -> str:
    return settings.topic(Topic.ORCHESTRATOR_SNAPSHOTS)


async def latest_snapshot(
    settings: KafkaSettings, partition: int, start: int, end: int
) -> PartitionSnapshot | None:
    """The latest committed snapshot of ``partition`` between offsets ``start`` and ``end`` of
    the snapshots topic (its log start and last stable offset); None if there is none.
    ``SnapshotUnusable`` if it cannot be read: the caller folds the log instead."""
    topic = snapshots_topic(settings)
    window = _FIRST_WINDOW
    until = end
    while until > start:
        since = max(start, until - window)
        found: bytes | None = None
        async for batch in read_partitions(settings, topic, {partition: since}, {partition: until}):
            for value in batch.values:
                if kind(value) == PARTITION:
                    found = value
        if found is not None:
            return decode_partition(found)
        until, window = since, window * 2
    return None


async def from_snapshot(
    settings: KafkaSettings,
    partition: int,
    events: tuple[int, int],
    snapshots: tuple[int, int],
) -> tuple[PartitionSnapshot, dict[str, PipelineState], int] | None:
    """The partition's latest snapshot, and its states with the events after it folded in
    (and how many), given the (start, end) offsets of the partition in the events topic and in
    the snapshots topic; None without a snapshot; ``SnapshotUnusable`` if the snapshot, or an
    archived pipeline the tail needs, cannot stand for the log."""
    snapshot = await latest_snapshot(settings, partition, *snapshots)
    if snapshot is None:
        return None
    start, end = events
    if not start <= snapshot.events_offset <= end or snapshot.partition != partition:
        raise SnapshotUnusable(
            f"it stands for offset {snapshot.events_offset} of partition {snapshot.partition}, "
            f"the log holds {start}-{end} of {partition}"
        )
    states, count = await fold_after(settings, partition, snapshot, end)
    return snapshot, states, count


@dataclass(slots=True)
class Replayed:
    """What a replay of partitions rebuilt."""

    states: dict[int, dict[str, PipelineState]]
    events: int  # events folded
    books: dict[int, PartitionBook]
    loaded: int = 0  # partitions that started from their snapshot
    unusable: int = 0  # partitions whose snapshot could not stand for the log


async def replay_from_snapshots(
    settings: KafkaSettings,
    partitions: Sequence[int],
    *,
    distrusted: Set[int] = frozenset(),
    helpers: ReplayHelpers | None = None,
) -> Replayed:
    """The partitions' states: from their latest snapshots and the events after them, or from
    their whole log (with ``helpers``) where a snapshot is missing, unusable (a warning), or
    ``distrusted``."""
    events = [TopicPartition(settings.topic(Topic.PIPELINE_EVENTS), p) for p in partitions]
    snaps = snapshot_partitions(settings, partitions)
    starts, ends = await log_bounds(settings, events + snaps)
    # Each partition's snapshot and tail are read at the same time: each read waits on the
    # broker more than it works.
    loaded = await asyncio.gather(
        *(
            from_snapshot(settings, p, (starts[e], ends[e]), (starts[s], ends[s]))
            for p, e, s in zip(partitions, events, snaps, strict=True)
            if p not in distrusted
        ),
        return_exceptions=True,
    )
    outcomes = dict(zip([p for p in partitions if p not in distrusted], loaded, strict=True))
    out = Replayed(states={}, events=0, books={})
    from_log: list[int] = []
    for p, etp in zip(partitions, events, strict=True):
        book = out.books[p] = PartitionBook(events_end=ends[etp])
        outcome = outcomes.get(p)
        if isinstance(outcome, SnapshotUnusable):
            log.warning(
                "the snapshot of partition %s is unusable (%s): folding its log instead",
                p,
                outcome,
                extra={"partition": p, "reason": str(outcome)},
            )
            out.unusable += 1
            from_log.append(p)
        elif isinstance(outcome, BaseException):
            raise outcome
        elif outcome is None:
            from_log.append(p)
        else:
            snapshot, out.states[p], n = outcome
            out.events += n
            out.loaded += 1
            book.archived, book.cache = snapshot.archived, dict(snapshot.cache)
            log.info(
                "partition %s starts from its snapshot at offset %s (%d events after it)",
                p,
                snapshot.events_offset,
                n,
                extra={"partition": p, "offset": snapshot.events_offset, "events": n},
            )
    if from_log:
        folded, n = await replay_partitions(settings, from_log, helpers)
        out.states.update(folded)
        out.events += n
    return out


async def read_archived(
    settings: KafkaSettings, partition: int, offsets: dict[str, int]
) -> dict[str, PipelineState]:
    """The archived pipelines at these offsets of the snapshots topic's ``partition``.
    ``SnapshotUnusable`` if one is missing or unreadable (the caller folds the log instead)."""
    topic = snapshots_topic(settings)
    states: dict[str, PipelineState] = {}
    for pid, offset in offsets.items():
        values: list[bytes | None] = []
        async for batch in read_partitions(
            settings, topic, {partition: offset}, {partition: offset + 1}
        ):
            values.extend(v for i, v in enumerate(batch.values) if batch.offset(i) == offset)
        if not values:
            raise SnapshotUnusable(
                f"the archived state of {pid} at {topic}[{partition}]@{offset} is gone"
            )
        state = decode_archived(values[0])
        if state.pipeline_id != pid:
            raise SnapshotUnusable(
                f"{topic}[{partition}]@{offset} holds {state.pipeline_id}, not {pid}"
            )
        states[pid] = state
    return states


async def fold_after(
    settings: KafkaSettings, partition: int, snapshot: PartitionSnapshot, end: int
) -> tuple[dict[str, PipelineState], int]:
    """The partition's states: the snapshot's, with the events from its offset up to ``end``
    folded in (archived pipelines they are about brought back first); and the events read.
    Their archived entries stay in ``snapshot.archived`` for those still there."""
    topic = settings.topic(Topic.PIPELINE_EVENTS)
    states = snapshot.states
    views = ViewDecoder()
    count = 0

    def skip(index: int, error: DecodeError) -> None:
        log.error("unreadable event skipped in replay: %s[%s]: %s", topic, partition, error)

    starts, ends = {partition: snapshot.events_offset}, {partition: end}
    async for batch in read_partitions(settings, topic, starts, ends):
        envelopes = list(views.decode_all(batch.values, skip, batch.extra_headers))
        await restore(
            settings, partition, (e.data.pipeline_id for e in envelopes), states, snapshot.archived
        )
        fold(envelopes, into=states)
        count += len(envelopes)
    return states, count


async def restore(
    settings: KafkaSettings,
    partition: int,
    pipeline_ids: Iterable[str],
    states: dict[str, PipelineState],
    archived: dict[str, int],
) -> list[PipelineState]:
    """Bring back into ``states`` the archived pipelines among ``pipeline_ids`` (removed from
    ``archived``: in memory now); returns them."""
    missing = pipelines_to_restore(set(pipeline_ids), states, archived)
    if not missing:
        return []
    back = await read_archived(settings, partition, missing)
    states.update(back)
    for pid in back:
        del archived[pid]
    return list(back.values())


def snapshot_partitions(settings: KafkaSettings, partitions: Iterable[int]) -> list[TopicPartition]:
    topic = snapshots_topic(settings)
    return [TopicPartition(topic, p) for p in partitions]
