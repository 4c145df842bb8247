"""Read partitions of a topic whole: where their logs start and end once no transaction is
open on them, and every committed record up to given end offsets. The bulk read behind
rebuilding state from a log (the orchestrator's replay).

``AIOKafkaConsumer`` spends about 3 us of Python on every record (a generator step and a
``ConsumerRecord`` with eleven fields) before the reader sees it: at a million events that is
most of a replay. This reader sends aiokafka's Fetch requests itself and walks each response's
record batches with aiokafka's C record parser, handing out one ``Batch`` of raw values per
partition and response, however many record batches it spans: the orchestrator commits a
transaction per decision, so its log is a record batch of one or two records, then a commit
marker, over and over, and any work per record batch (a ``Batch``, a fold, reading a marker)
would cost more than the records. It asks for the next response before the caller folds the
current one, so the broker works while we fold.

Only committed records come out (``read_committed``): records of aborted transactions and the
transaction markers are skipped, as a consumer would.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from aiokafka import errors as kafka_errors
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.offset import OffsetRequest
from aiokafka.record.control_record import ABORT_MARKER, ControlRecord
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from posttrain.events.codec import OWN_HEADER_COUNT, has_extra_headers
from posttrain.events.kafka.settings import KafkaSettings

READ_UNCOMMITTED, READ_COMMITTED = 0, 1
_EARLIEST, _LATEST = -2, -1  # ListOffsets' timestamps for the log start and end
# A response is read, copied and parsed whole (aiokafka's connection and protocol), so each
# round allocates a few copies of it, and the larger they are the more of them come as fresh
# pages from the kernel: 16 MB responses took 36,000 page faults and 0.11 s of system time in a
# 64,000-event replay, 4 MB ones 18,000-20,000, 1 MB ones 12,500 (the replay's median over
# eight fresh processes each, alternated: 0.299 -> 0.288 s; 0.5 MB ones took more rounds than
# they saved, 0.296-0.308 s). A round (~1 MB folded, ~6 ms) is still far longer than a round
# trip.
_PARTITION_FETCH_BYTES = 256 * 1024
_FETCH_BYTES = 1024 * 1024
# The first round asks for little, so that folding starts while the broker reads the rest;
# each round asks for twice as much, up to _PARTITION_FETCH_BYTES.
_FIRST_PARTITION_FETCH_BYTES = 128 * 1024
_MAX_WAIT_MS = 100
_RETRIES = 20  # leader moves and such: refresh metadata and ask again, this many times
_RECORDS_PER_LOOP_TURN = 5_000
_MAX_STALLED_ROUNDS = 100  # rounds (of up to _MAX_WAIT_MS each) without a step forward


@dataclass(frozen=True, slots=True)
class Batch:
    """Committed records of one partition, in offset order, from one fetch response.

    Their offsets have gaps (a transaction marker follows every transaction, aborted records
    are left out), so they are kept as runs of consecutive offsets: run ``j`` starts at record
    ``run_indexes[j]``, whose offset is ``run_offsets[j]``; ``offset(i)`` gives record ``i``'s.
    ``extra_headers`` holds the headers of the records that carry more than the codec's own
    three (the only ones ``decode`` reads), by index."""

    partition: int
    values: list[bytes | None]
    extra_headers: dict[int, list[tuple[str, bytes]]]
    run_indexes: list[int]
    run_offsets: list[int]

    def offset(self, index: int) -> int:
        """The offset of record ``index``."""
        run = bisect_right(self.run_indexes, index) - 1
        return self.run_offsets[run] + index - self.run_indexes[run]


class LogReader:
    """One connection to the cluster for reading partitions whole: where their logs start and
    end (``bounds``), then their records (``read``).

    A replay asks for both, right after a restart: one client, bootstrapped once, answers the
    bounds in a round trip (4 ms here), where two consumers started for them took 15-20 ms
    before the first record was asked for."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._client = AIOKafkaClient(
            **settings.client_options(), client_id=f"{settings.client_id}-logreader"
        )
        self._topics: set[str] = set()

    async def __aenter__(self) -> LogReader:
        await self._client.bootstrap()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()

    async def _know(self, topics: Iterable[str]) -> None:
        if not self._topics.issuperset(topics):
            self._topics.update(topics)
            await self._client.set_topics(sorted(self._topics))

    async def bounds(
        self, tps: Sequence[TopicPartition], timeout_s: float = 120.0
    ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """Where each partition's log starts, and where it ends once no transaction is open on
        it (its last stable offset, once that has caught up with the high watermark).

        A fenced predecessor's transaction is aborted when we initialise our producer, but the
        abort markers reach the partitions a moment later; until then the last stable offset
        stops short of decisions that were committed. Replaying up to it would forget them, so
        wait until the last stable offset has caught up with the high watermark."""
        if not tps:
            return {}, {}
        await self._know({tp.topic for tp in tps})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        starts, high, stable = await asyncio.gather(
            self._offsets(tps, _EARLIEST, READ_COMMITTED),
            self._offsets(tps, _LATEST, READ_UNCOMMITTED),
            self._offsets(tps, _LATEST, READ_COMMITTED),
        )
        while not all(stable[tp] >= high[tp] for tp in tps):
            if loop.time() > deadline:
                open_ = sorted(str(tp) for tp in tps if stable[tp] < high[tp])
                raise TimeoutError(f"transactions still open on {open_} after {timeout_s} s")
            await asyncio.sleep(0.05)
            high, stable = await asyncio.gather(
                self._offsets(tps, _LATEST, READ_UNCOMMITTED),
                self._offsets(tps, _LATEST, READ_COMMITTED),
            )
        return starts, stable

    async def _offsets(
        self, tps: Sequence[TopicPartition], at: int, isolation: int
    ) -> dict[TopicPartition, int]:
        """One ListOffsets round for ``tps`` (``at``: earliest or latest), asked of each
        partition's leader."""
        answers = await _ask_leaders(
            self._client,
            tps,
            lambda on: OffsetRequest(-1, isolation, _by_topic(on, at)),
            lambda tp: f"offsets of {tp}",
        )
        # v1+: (timestamp, offset[, leader epoch]) after the partition and its error code
        return {tp: fields[1] for _version, tp, fields in answers}

    async def read(
        self, topic: str, starts: Mapping[int, int], ends: Mapping[int, int]
    ) -> AsyncIterator[Batch]:
        """Every committed record of ``topic`` from ``starts[p]`` (the log start) up to, not
        including, ``ends[p]`` (a last stable offset), in offset order within each partition."""
        positions = {p: starts.get(p, 0) for p, end in ends.items() if end > starts.get(p, 0)}
        if not positions:
            return
        client = self._client
        await self._know([topic])
        fetching: asyncio.Future[list[_PartitionData]] | None = None
        try:
            stalled = 0
            size = _FIRST_PARTITION_FETCH_BYTES
            while positions:
                if fetching is None:
                    fetching = asyncio.ensure_future(_fetch(client, topic, dict(positions), size))
                responses = await fetching
                fetching = None
                batches: list[Batch] = []
                moved = False
                for partition, version, fields in responses:
                    position = positions[partition]
                    after = _unpack(version, fields, partition, position, ends[partition], batches)
                    moved = moved or after > position
                    if after >= ends[partition]:
                        del positions[partition]
                    else:
                        positions[partition] = after
                stalled = 0 if moved else stalled + 1
                if stalled > _MAX_STALLED_ROUNDS:
                    raise TimeoutError(f"{topic}: no records at {positions} below {dict(ends)}")
                size = min(2 * size, _PARTITION_FETCH_BYTES)
                if positions:  # the broker prepares the next round while the caller folds this one
                    fetching = asyncio.ensure_future(_fetch(client, topic, dict(positions), size))
                since_yield = 0
                for batch in batches:
                    yield batch
                    since_yield += len(batch.values)
                    if since_yield >= _RECORDS_PER_LOOP_TURN:
                        # Let the event loop run now and then: the next response comes off the
                        # socket while the caller folds, instead of after.
                        since_yield = 0
                        await asyncio.sleep(0)
        finally:
            if fetching is not None:
                fetching.cancel()


async def read_partitions(
    settings: KafkaSettings,
    topic: str,
    starts: Mapping[int, int],
    ends: Mapping[int, int],
) -> AsyncIterator[Batch]:
    """``LogReader.read`` on a reader of its own."""
    if not any(end > starts.get(p, 0) for p, end in ends.items()):
        return
    async with LogReader(settings) as reader:
        async for batch in reader.read(topic, starts, ends):
            yield batch


async def log_bounds(
    settings: KafkaSettings, tps: Sequence[TopicPartition], timeout_s: float = 120.0
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """``LogReader.bounds`` on a reader of its own."""
    async with LogReader(settings) as reader:
        return await reader.bounds(tps, timeout_s)


def _by_leader(
    client: AIOKafkaClient, tps: Iterable[TopicPartition]
) -> dict[int, list[TopicPartition]] | None:
    """The partitions by their leader's node id; None while one has no known leader."""
    out: dict[int, list[TopicPartition]] = {}
    for tp in tps:
        leader = client.cluster.leader_for_partition(tp)
        if leader is None or leader == -1:
            return None
        out.setdefault(leader, []).append(tp)
    return out


def _by_topic(tps: Iterable[TopicPartition], at: int) -> list[tuple[str, list[tuple[int, int]]]]:
    topics: dict[str, list[tuple[int, int]]] = {}
    for tp in tps:
        topics.setdefault(tp.topic, []).append((tp.partition, at))
    return list(topics.items())


# (partition, Fetch response version, the partition's fields after its high watermark)
_PartitionData = tuple[int, int, list[Any]]


async def _fetch(
    client: AIOKafkaClient, topic: str, positions: Mapping[int, int], partition_bytes: int
) -> list[_PartitionData]:
    """One Fetch round over the partitions' leaders, up to ``partition_bytes`` of each."""
    answers = await _ask_leaders(
        client,
        [TopicPartition(topic, p) for p in positions],
        lambda on: _fetch_request(topic, on, positions, partition_bytes),
        # out of range (the log start moved), authorisation, ...
        lambda tp: f"{tp.topic}[{tp.partition}] at offset {positions[tp.partition]}",
    )
    # The fields after the high watermark.
    return [(tp.partition, version, fields[1:]) for version, tp, fields in answers]


async def _ask_leaders(
    client: AIOKafkaClient,
    tps: Sequence[TopicPartition],
    request: Callable[[list[TopicPartition]], Any],
    what: Callable[[TopicPartition], str],
) -> list[tuple[int, TopicPartition, list[Any]]]:
    """``request(partitions)`` sent to each leader of ``tps`` at once; for every partition its
    response's version and the partition's fields after its error code. While a partition has
    no known leader or a retriable error, the metadata is refreshed and all are asked again;
    any other error is raised, ``what`` naming the partition."""
    for attempt in range(_RETRIES):
        by_leader = _by_leader(client, tps)
        if by_leader is not None:
            responses = await asyncio.gather(
                *(client.send(node, request(on)) for node, on in by_leader.items())
            )
            out: list[tuple[int, TopicPartition, list[Any]]] = []
            retry = False
            for response in responses:
                for topic, partitions in response.topics:
                    for partition, error_code, *fields in partitions:
                        tp = TopicPartition(topic, partition)
                        error = kafka_errors.for_code(error_code)
                        if error is kafka_errors.NoError:
                            out.append((response.API_VERSION, tp, fields))
                        elif error.retriable or error.invalid_metadata:
                            retry = True
                        else:
                            raise error(what(tp))
            if not retry:
                return out
        await client.force_metadata_update()
        await asyncio.sleep(min(0.05 * (attempt + 1), 1.0))
    raise kafka_errors.KafkaTimeoutError(f"{what(tps[0])}: still failing after {_RETRIES} tries")


def _fetch_request(
    topic: str, on: list[TopicPartition], positions: Mapping[int, int], partition_bytes: int
) -> FetchRequest:
    partitions = [(tp.partition, positions[tp.partition], partition_bytes) for tp in on]
    return FetchRequest(_MAX_WAIT_MS, 1, _FETCH_BYTES, READ_COMMITTED, [(topic, partitions)])


def _unpack(
    version: int, fields: list[Any], partition: int, position: int, end: int, out: list[Batch]
) -> int:
    """Append the committed records of one partition's response to ``out``, as one ``Batch``;
    returns the position after them.

    A log written a transaction per decision holds a commit marker after every record batch of
    one or two records, so this loop runs once per record batch, and does the least it can
    there: records are gathered across record batches and handed out, decoded and folded in
    one piece."""
    aborted = deque(sorted(_aborted_transactions(version, fields), key=lambda a: a[1]))
    aborting: set[int] = set()  # producers whose records are now those of an aborted transaction
    records = MemoryRecords(fields[-1])
    kept: list[Any] = []
    run_indexes: list[int] = []
    run_offsets: list[int] = []
    next_batch = records.next_batch
    while position < end and (batch := next_batch()) is not None:
        next_offset = batch.next_offset
        if next_offset <= position:
            continue  # sent again from before our position
        producer = batch.producer_id
        if producer is not None and producer >= 0:
            if aborted:
                while aborted and aborted[0][1] <= batch.base_offset:
                    aborting.add(aborted.popleft()[0])
            if batch.is_control_batch:  # a transaction marker (an attribute bit: not decoded)
                # Only an abort marker of a producer we are skipping changes anything: any
                # other marker (nearly all are commits) is passed without reading its record.
                if producer in aborting and _is_abort_marker(batch):
                    aborting.discard(producer)
                position = next_offset
                continue
            if aborting and producer in aborting and batch.is_transactional:
                position = next_offset
                continue
        elif batch.is_control_batch:
            position = next_offset
            continue
        base = batch.base_offset
        before = len(kept)
        if base >= position and next_offset <= end:
            kept.extend(batch)  # the whole batch: no per-record check
        else:
            kept.extend([r for r in batch if position <= r.offset < end])
        taken = len(kept) - before
        if taken == next_offset - base:  # every offset of the batch: one run
            run_indexes.append(before)
            run_offsets.append(base)
        elif taken:  # cut, or gaps (records removed by compaction): a run per record
            run_indexes.extend(range(before, before + taken))
            run_offsets.extend([r.offset for r in kept[before:]])
        position = next_offset
    if kept:
        out.append(
            Batch(
                partition=partition,
                values=list(map(_value, kept)),
                extra_headers=_extra_headers(kept),
                run_indexes=run_indexes,
                run_offsets=run_offsets,
            )
        )
    return position


_value = attrgetter("value")
_headers = attrgetter("headers")


def _aborted_transactions(version: int, fields: list[Any]) -> list[tuple[int, int]]:
    """(producer id, first offset) of the aborted transactions in this response.

    The partition fields after the high watermark: v4 [lso, aborted, records]; v5-v10 [lso,
    log_start, aborted, records]; v11 [lso, log_start, aborted, preferred_replica, records]."""
    if version < 4:
        return []
    return list((fields[2] if version >= 11 else fields[-2]) or ())


def _extra_headers(records: list[Any]) -> dict[int, list[tuple[str, bytes]]]:
    # Almost always none: one cheap pass to find out, a second only when there are.
    if max(map(len, map(_headers, records))) <= OWN_HEADER_COUNT:
        return {}
    return {i: list(r.headers) for i, r in enumerate(records) if has_extra_headers(r.headers)}


def _is_abort_marker(batch: Any) -> bool:
    return bool(ControlRecord.parse(next(iter(batch)).key) == ABORT_MARKER)
