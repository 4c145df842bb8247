"""The bulk log reader on the real broker reads what a read_committed consumer reads."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from posttrain.events.kafka import KafkaSettings, logreader
from posttrain.events.kafka.logreader import read_partitions
from posttrain.events.topics import Topic

pytestmark = pytest.mark.integration

OWN = [("posttrain-type", b"T"), ("posttrain-version", b"1"), ("content-type", b"x")]


async def _write_mixed_log(settings: KafkaSettings, topic: str) -> None:
    """Plain records, committed and aborted transactions interleaved, a committed transaction of
    the producer that aborted, records with extra headers, on partitions 0 and 1."""
    plain = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, enable_idempotence=True)
    txn_a, txn_b = (
        AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            transactional_id=settings.group(f"logreader-test-{name}"),
        )
        for name in ("a", "b")
    )
    for p in (plain, txn_a, txn_b):
        await p.start()
    try:
        for partition in (0, 1):
            for i in range(300):
                headers = [*OWN, ("trace", f"t{i}".encode())] if i % 50 == 0 else OWN
                await plain.send(
                    topic, f"plain-{partition}-{i}".encode(), partition=partition, headers=headers
                )
            await plain.flush()
        # An aborted transaction whose records sit between records of a committed one.
        await txn_a.begin_transaction()
        await txn_b.begin_transaction()
        for i in range(200):
            for partition in (0, 1):
                await txn_a.send(topic, f"aborted-{partition}-{i}".encode(), partition=partition)
                await txn_b.send(
                    topic, f"committed-{partition}-{i}".encode(), partition=partition, headers=OWN
                )
        await txn_a.abort_transaction()
        await txn_b.commit_transaction()
        # The producer that aborted commits next: its abort marker must end the skipping.
        await txn_a.begin_transaction()
        for i in range(20):
            for partition in (0, 1):
                await txn_a.send(topic, f"again-{partition}-{i}".encode(), partition=partition)
        await txn_a.commit_transaction()
        for partition in (0, 1):
            await plain.send_and_wait(topic, f"after-{partition}".encode(), partition=partition)
    finally:
        for p in (plain, txn_a, txn_b):
            await p.stop()


async def _reference(
    settings: KafkaSettings, topic: str, starts: dict[int, int], ends: dict[int, int]
) -> list[tuple[int, int, bytes, list[tuple[str, bytes]]]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[tuple[int, int, bytes, list[tuple[str, bytes]]]] = []
    try:
        for partition, end in ends.items():
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, starts[partition])
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                for record in batch.get(tp, []):
                    if record.offset < end:
                        out.append((partition, record.offset, record.value, list(record.headers)))
    finally:
        await consumer.stop()
    return out


async def _read(
    settings: KafkaSettings, topic: str, starts: dict[int, int], ends: dict[int, int]
) -> list[tuple[int, int, Any, list[tuple[str, bytes]]]]:
    out = []
    async for batch in read_partitions(settings, topic, starts, ends):
        for i, value in enumerate(batch.values):
            out.append((batch.partition, batch.offset(i), value, batch.extra_headers.get(i, [])))
    # The reader hands out the headers decode() needs: all of them when a record has extra ones.
    return out


async def _bounds(settings: KafkaSettings, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in (0, 1)]
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {tp.partition: o for tp, o in starts.items()}, {
        tp.partition: o for tp, o in ends.items()
    }


def _comparable(records: list[Any]) -> list[Any]:
    # The reference consumer gives every record's headers; the reader only extra ones'.
    return [(p, o, v, h if len(h) > len(OWN) else []) for p, o, v, h in records]


async def test_reads_exactly_the_committed_records_in_order(kafka_settings: KafkaSettings):
    topic = kafka_settings.topic(Topic.PIPELINE_EVENTS)
    await _write_mixed_log(kafka_settings, topic)
    starts, ends = await _bounds(kafka_settings, topic)
    got = await _read(kafka_settings, topic, starts, ends)
    values = [v for _, _, v, _ in got]
    assert not any(v.startswith(b"aborted") for v in values)
    for partition in (0, 1):
        mine = [v for p, _, v, _ in got if p == partition]
        assert mine == (
            [f"plain-{partition}-{i}".encode() for i in range(300)]
            + [f"committed-{partition}-{i}".encode() for i in range(200)]
            + [f"again-{partition}-{i}".encode() for i in range(20)]
            + [f"after-{partition}".encode()]
        )
    with_trace = [h for _, _, _, h in got if h]
    assert len(with_trace) == 12 and all(("trace", b"t0") in h or len(h) == 4 for h in with_trace)
    assert got == _comparable(await _reference(kafka_settings, topic, starts, ends))


async def test_starts_and_ends_cut_inside_batches(kafka_settings: KafkaSettings):
    topic = kafka_settings.topic(Topic.PIPELINE_EVENTS)
    await _write_mixed_log(kafka_settings, topic)
    _, ends = await _bounds(kafka_settings, topic)
    starts = {0: 17, 1: 123}
    cut = {0: 250, 1: ends[1] - 5}
    got = await _read(kafka_settings, topic, starts, cut)
    assert got == _comparable(await _reference(kafka_settings, topic, starts, cut))
    assert [o for p, o, _, _ in got if p == 0] == list(range(17, 250))
    assert all(starts[p] <= o < cut[p] for p, o, _, _ in got)


async def test_an_empty_range_reads_nothing(kafka_settings: KafkaSettings):
    topic = kafka_settings.topic(Topic.PIPELINE_EVENTS)
    assert await _read(kafka_settings, topic, {0: 0, 1: 0}, {0: 0, 1: 0}) == []


async def test_many_small_rounds_read_what_one_large_one_does(
    kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch
):
    # Rounds of a few hundred bytes end inside transactions, aborted ones included: each round
    # must still leave out exactly the aborted records and keep offsets and order.
    monkeypatch.setattr(logreader, "_FIRST_PARTITION_FETCH_BYTES", 256)
    monkeypatch.setattr(logreader, "_PARTITION_FETCH_BYTES", 2048)
    topic = kafka_settings.topic(Topic.PIPELINE_EVENTS)
    await _write_mixed_log(kafka_settings, topic)
    starts, ends = await _bounds(kafka_settings, topic)
    got = await _read(kafka_settings, topic, starts, ends)
    assert len(got) == 2 * (300 + 200 + 20 + 1)
    assert got == _comparable(await _reference(kafka_settings, topic, starts, ends))


async def test_bounds_are_a_read_committed_consumers(kafka_settings: KafkaSettings):
    topic = kafka_settings.topic(Topic.PIPELINE_EVENTS)
    await _write_mixed_log(kafka_settings, topic)
    tps = [TopicPartition(topic, p) for p in (0, 1)]
    starts, ends = await logreader.log_bounds(kafka_settings, tps)
    assert (
        {tp.partition: o for tp, o in starts.items()},
        {tp.partition: o for tp, o in ends.items()},
    ) == (await _bounds(kafka_settings, topic))
    # Each partition: 721 records (200 of them aborted) and 3 transaction markers.
    assert all(starts[tp] == 0 and ends[tp] == 724 for tp in tps)


async def test_bounds_wait_for_an_open_transaction_to_end(kafka_settings: KafkaSettings):
    # Replaying up to a last stable offset held back by an open transaction would forget the
    # decisions committed after it: the bounds come only once it is over.
    topic = kafka_settings.topic(Topic.PIPELINE_EVENTS)
    tp = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_settings.bootstrap_servers,
        transactional_id=kafka_settings.group("logreader-test-open"),
    )
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(topic, b"before", partition=0)
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"inside", partition=0)
        with pytest.raises(TimeoutError, match=str(tp.partition)):
            await logreader.log_bounds(kafka_settings, [tp], timeout_s=0.5)
        async with logreader.LogReader(kafka_settings) as reader:
            waiting = asyncio.ensure_future(reader.bounds([tp], timeout_s=30))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            await producer.commit_transaction()
            _, ends = await asyncio.wait_for(waiting, 30)
            # before, its commit marker, inside, its commit marker: the stable end is past both.
            assert ends[tp] == 4
            values = [
                v
                for b in [b async for b in reader.read(topic, {0: 0}, {0: ends[tp]})]
                for v in b.values
            ]
            assert values == [b"before", b"inside"]
    finally:
        await producer.stop()
