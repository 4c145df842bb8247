"""Throughput of the event bus: the project's batched helpers against a naive loop.

Produces N small envelopes (TickClock, about 200 bytes) with ``EventProducer.send_many`` in one
process while another process consumes and decodes them with ``EventConsumer``; the figure is N
over the wall time from the first send to the last message decoded. In the same run, a naive
loop (one ``send_and_wait`` per message, one ``getone`` per message) moves fewer messages.

    python -m bench.bus [--messages 1000000] [--naive-messages 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import time
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.common import drop_namespace, fresh_namespace
from posttrain.events import Envelope, decode, encode
from posttrain.events.kafka import EventConsumer, EventProducer, KafkaSettings
from posttrain.events.messages import TickClock
from posttrain.events.topics import Topic

TOPIC = Topic.PIPELINE_COMMANDS
CHUNK = 20_000
WHEN = datetime(2026, 1, 1, tzinfo=UTC)


def _envelopes(start: int, count: int) -> list[Envelope[TickClock]]:
    return [
        Envelope.create(
            TickClock(pipeline_id=f"p-{i % 1000}", now=float(i)),
            key=f"p-{i % 1000}",
            id=f"e-{i}",
            occurred_at=WHEN,
        )
        for i in range(start, start + count)
    ]


async def _produce(settings: KafkaSettings, total: int) -> float:
    async with EventProducer(settings) as producer:
        await producer.send_many(TOPIC, _envelopes(0, 10))  # metadata warm-up
        started = time.perf_counter()
        for start in range(10, total, CHUNK):
            await producer.send_many(TOPIC, _envelopes(start, min(CHUNK, total - start)))
        return time.perf_counter() - started


async def _consume(settings: KafkaSettings, total: int) -> float:
    async with EventConsumer(
        settings,
        [TOPIC],
        group_id=None,
        name="bench-bus",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
    ) as consumer:
        seen = 0
        started = None
        while seen < total:
            batch = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            if batch and started is None:
                started = time.perf_counter()
            seen += len(batch)
        assert started is not None
        return time.perf_counter() - started


def _consumer_process(settings: KafkaSettings, total: int, out: mp.Queue) -> None:
    out.put(asyncio.run(_consume(settings, total)))


async def _naive(settings: KafkaSettings, total: int) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, enable_idempotence=True, acks="all"
    )
    consumer = AIOKafkaConsumer(
        settings.topic(TOPIC),
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await producer.start()
    await consumer.start()
    try:
        started = time.perf_counter()
        for envelope in _envelopes(0, total):
            key, value, headers = encode(envelope)
            await producer.send_and_wait(
                settings.topic(TOPIC), value=value, key=key, headers=headers
            )
        for _ in range(total):
            record = await consumer.getone()
            decode(record.value, record.headers)
        return time.perf_counter() - started
    finally:
        await consumer.stop()
        await producer.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--naive-messages", type=int, default=5_000)
    args = parser.parse_args()

    settings = await fresh_namespace("bus", [TOPIC])
    naive_settings = await fresh_namespace("bus-naive", [TOPIC])
    try:
        naive_s = await _naive(naive_settings, args.naive_messages)
        naive_rate = args.naive_messages / naive_s
        print(f"naive_messages: {args.naive_messages}")
        print(f"naive_msgs_per_s: {naive_rate:,.0f}")

        ctx = mp.get_context("spawn")
        out: mp.Queue = ctx.Queue()
        consumer = ctx.Process(target=_consumer_process, args=(settings, args.messages, out))
        consumer.start()
        wall_start = time.perf_counter()
        produce_s = await _produce(settings, args.messages)
        consume_s = await asyncio.to_thread(out.get, True, 600)
        wall_s = time.perf_counter() - wall_start
        consumer.join()
        rate = args.messages / wall_s
        print(f"messages: {args.messages}")
        print(f"produce_only_msgs_per_s: {args.messages / produce_s:,.0f}")
        print(f"consume_only_msgs_per_s: {args.messages / consume_s:,.0f}")
        print(f"end_to_end_seconds: {wall_s:.2f}")
        print(f"ratio_vs_naive: {rate / naive_rate:.1f}")
        print(f"bus_msgs_per_s: {rate:.0f}")
    finally:
        await drop_namespace(settings)
        await drop_namespace(naive_settings)


if __name__ == "__main__":
    asyncio.run(main())
