"""Read partitions of a topic whole, up to given end offsets: the bulk read behind rebuilding
state from a log (the orchestrator's replay).

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
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from aiokafka import errors as kafka_errors
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.control_record import ABORT_MARKER, ControlRecord
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from posttrain.events.codec import OWN_HEADER_COUNT, has_extra_headers
from posttrain.events.kafka.settings import KafkaSettings

READ_COMMITTED = 1
# A response is read, copied and parsed whole (aiokafka's connection and protocol), so each
# round allocates a few copies of it: responses of 16 MB took fresh pages from the kernel every
# round (36,000 page faults and 0.11 s of system time in a 64,000-event replay), where 4 MB
# ones reuse freed memory (18,000; 0.06 s; the replay's CPU 0.45 -> 0.43 s, median of six
# fresh processes each, load ~5 on 2 cpus). A round is still far longer than a round trip.
_PARTITION_FETCH_BYTES = 1024 * 1024
# The first round asks for little, so that folding starts while the broker reads the rest;
# each round asks for twice as much, up to _PARTITION_FETCH_BYTES.
_FIRST_PARTITION_FETCH_BYTES = 128 * 1024
_FETCH_BYTES = 4 * 1024 * 1024
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


async def read_partitions(
    settings: KafkaSettings,
    topic: str,
    starts: Mapping[int, int],
    ends: Mapping[int, int],
) -> AsyncIterator[Batch]:
    """Every committed record of ``topic`` from ``starts[p]`` (the log start) up to, not
    including, ``ends[p]`` (a last stable offset), in offset order within each partition."""
    positions = {p: starts.get(p, 0) for p, end in ends.items() if end > starts.get(p, 0)}
    if not positions:
        return
    client = AIOKafkaClient(
        **settings.client_options(), client_id=f"{settings.client_id}-logreader"
    )
    await client.bootstrap()
    fetching: asyncio.Future[list[_PartitionData]] | None = None
    try:
        await client.set_topics([topic])
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
        await client.close()


# (partition, Fetch response version, the partition's fields after its high watermark)
_PartitionData = tuple[int, int, list[Any]]


async def _fetch(
    client: AIOKafkaClient, topic: str, positions: Mapping[int, int], partition_bytes: int
) -> list[_PartitionData]:
    """One Fetch round over the partitions' leaders, up to ``partition_bytes`` of each."""
    for attempt in range(_RETRIES):
        by_leader: dict[int, list[tuple[int, int, int]]] = {}
        for partition, offset in positions.items():
            leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
            if leader is None or leader == -1:
                break
            by_leader.setdefault(leader, []).append((partition, offset, partition_bytes))
        else:
            out: list[_PartitionData] = []
            retry = False
            responses = await asyncio.gather(
                *(
                    client.send(
                        node,
                        FetchRequest(
                            _MAX_WAIT_MS, 1, _FETCH_BYTES, READ_COMMITTED, [(topic, partitions)]
                        ),
                    )
                    for node, partitions in by_leader.items()
                )
            )
            for response in responses:
                for _topic, partitions in response.topics:
                    for partition, error_code, _high, *fields in partitions:
                        error = kafka_errors.for_code(error_code)
                        if error is kafka_errors.NoError:
                            out.append((partition, response.API_VERSION, fields))
                        elif error.retriable or error.invalid_metadata:
                            retry = True
                        else:  # out of range (the log start moved), authorisation, ...
                            raise error(f"{topic}[{partition}] at offset {positions[partition]}")
            if not retry:
                return out
        await client.force_metadata_update()
        await asyncio.sleep(min(0.05 * (attempt + 1), 1.0))
    raise kafka_errors.KafkaTimeoutError(f"{topic}: fetch still failing after {_RETRIES} tries")


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
