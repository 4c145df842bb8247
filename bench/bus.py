"""Throughput of the event bus: the project's helpers against aiokafka's own batching, moving
the same messages with the same checks in the same run.

Each side moves N envelopes (``TickClock``, about 200 bytes, ids ``e-0`` .. ``e-N-1``) from a
producer in this process to a consumer in a process of its own, through a fresh namespace:

- helpers (the headline): ``EventProducer.send_many`` in chunks, ``EventConsumer`` in a group;
- baseline: ``AIOKafkaProducer.send`` per message with the same guarantees (idempotent,
  ``acks=all``, the same linger) gathered per chunk, and ``AIOKafkaConsumer.getmany`` in a group,
  decoding with the same codec.

Both consumers use their client's default fetch settings, commit their offsets after every
batch and check every message: its id seen exactly once and its payload the one sent for that
id. The figure is the ids seen exactly once over the wall time from the first send to the last
commit; a missing, repeated or wrong message counts against it (the run waits for the missing
ones until ``--timeout``, then reports what arrived), never leaves it.

    python -m bench.bus [--messages 500000] [--baseline-messages 500000] [--timeout 120]
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.common import drop_namespace, fresh_namespace, load
from posttrain.events import Envelope, decode, encode
from posttrain.events.kafka import EventConsumer, EventProducer, KafkaSettings
from posttrain.events.messages import TickClock
from posttrain.events.topics import Topic

TOPIC = Topic.PIPELINE_COMMANDS
CHUNK = 20_000
WHEN = datetime(2026, 1, 1, tzinfo=UTC)
LINGER_MS = 5  # EventProducer's default, given to the baseline too


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


# --- producing ------------------------------------------------------------------------------


async def _produce_helpers(settings: KafkaSettings, total: int) -> float:
    """Send with ``EventProducer.send_many``; returns when the first chunk was handed over."""
    async with EventProducer(settings) as producer:
        await producer.client.partitions_for(settings.topic(TOPIC))  # metadata, before timing
        started = time.time()
        for start in range(0, total, CHUNK):
            await producer.send_many(TOPIC, _envelopes(start, min(CHUNK, total - start)))
        return started


async def _produce_baseline(settings: KafkaSettings, total: int) -> float:
    producer = AIOKafkaProducer(
        **settings.client_options(),
        enable_idempotence=True,
        acks="all",
        linger_ms=LINGER_MS,
    )
    await producer.start()
    try:
        name = settings.topic(TOPIC)
        await producer.partitions_for(name)
        started = time.time()
        for start in range(0, total, CHUNK):
            futures = []
            for envelope in _envelopes(start, min(CHUNK, total - start)):
                key, value, headers = encode(envelope)
                futures.append(await producer.send(name, value=value, key=key, headers=headers))
            await asyncio.gather(*futures)
        return started
    finally:
        await producer.stop()


# --- consuming and checking -----------------------------------------------------------------


@dataclass
class Check:
    """Every id once, with its payload: what a consumer saw."""

    total: int
    seen: bytearray
    once: int = 0
    repeated: int = 0
    wrong: int = 0
    last_commit: float = 0.0

    @classmethod
    def of(cls, total: int) -> Check:
        return cls(total, bytearray(total))

    def add(self, envelope: Envelope[Any]) -> None:
        i = int(envelope.id[2:])
        data = envelope.data
        if not (0 <= i < self.total) or data.now != float(i) or data.pipeline_id != f"p-{i % 1000}":
            self.wrong += 1
        elif self.seen[i]:
            self.repeated += 1
        else:
            self.seen[i] = 1
            self.once += 1

    def summary(self) -> dict[str, float]:
        return {
            "once": self.once,
            "repeated": self.repeated,
            "wrong": self.wrong,
            "last_commit": self.last_commit,
        }


async def _check_all(
    fetch: Callable[[], Awaitable[list[Envelope[Any]]]],
    commit: Callable[[], Awaitable[None]],
    assigned: Callable[[], bool],
    total: int,
    ready: Any,
    timeout: float,
) -> Check:
    """Fetch, check and commit after every batch until every id is seen, or ``timeout`` after
    the consumer got its partitions (then the wait counts against the figure)."""
    check = Check.of(total)
    deadline = None
    while check.once < total and (deadline is None or time.time() < deadline):
        batch = await fetch()
        if deadline is None and assigned():
            ready.set()
            deadline = time.time() + timeout
        for envelope in batch:
            check.add(envelope)
        if batch:
            await commit()
            check.last_commit = time.time()
    if check.once < total:
        check.last_commit = time.time()
    return check


async def _consume_helpers(
    settings: KafkaSettings, total: int, ready: Any, timeout: float
) -> Check:
    async with EventConsumer(settings, [TOPIC], group_id="bench-bus", name="bench-bus") as consumer:

        async def fetch() -> list[Envelope[Any]]:
            return [r.envelope for r in await consumer.getmany(timeout_ms=200)]

        return await _check_all(
            fetch,
            consumer.commit,
            lambda: bool(consumer.client.assignment()),
            total,
            ready,
            timeout,
        )


async def _consume_baseline(
    settings: KafkaSettings, total: int, ready: Any, timeout: float
) -> Check:
    consumer = AIOKafkaConsumer(
        settings.topic(TOPIC),
        **settings.client_options(),
        group_id=settings.group("bench-bus-baseline"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()

    async def fetch() -> list[Envelope[Any]]:
        batches = await consumer.getmany(timeout_ms=200)
        return [decode(r.value, r.headers) for records in batches.values() for r in records]

    async def commit() -> None:
        await consumer.commit()

    try:
        return await _check_all(
            fetch, commit, lambda: bool(consumer.assignment()), total, ready, timeout
        )
    finally:
        await consumer.stop()


def _consumer_process(
    side: str, settings: KafkaSettings, total: int, ready: Any, out: Any, timeout: float
) -> None:
    consume = _consume_helpers if side == "helpers" else _consume_baseline
    out.put(asyncio.run(consume(settings, total, ready, timeout)).summary())


async def run_side(side: str, total: int, timeout: float) -> float:
    """Move ``total`` messages one way; prints that side's figures and returns its rate."""
    settings = await fresh_namespace(f"bus-{side}", [TOPIC])
    try:
        ctx = mp.get_context("spawn")
        ready, out = ctx.Event(), ctx.Queue()
        consumer = ctx.Process(
            target=_consumer_process, args=(side, settings, total, ready, out, timeout)
        )
        consumer.start()
        if not await asyncio.to_thread(ready.wait, 60):
            consumer.kill()
            raise RuntimeError(f"{side}: the consumer got no partitions in 60 s")
        produce = _produce_helpers if side == "helpers" else _produce_baseline
        t = time.perf_counter()
        started = await produce(settings, total)
        produce_s = time.perf_counter() - t
        result = await asyncio.to_thread(out.get, True, timeout + 120)
        consumer.join(30)
        once = int(result["once"])
        seconds = float(result["last_commit"]) - started
        rate = once / seconds
        print(f"{side}_messages: {total}")
        print(f"{side}_produce_msgs_per_s: {total / produce_s:,.0f}")
        print(
            f"{side}_checked: {once} once, {result['repeated']:.0f} repeated, "
            f"{result['wrong']:.0f} wrong, {total - once} missing"
        )
        print(f"{side}_msgs_per_s: {rate:,.0f} ({seconds:.2f} s to the last commit; {load()})")
        return rate
    finally:
        await drop_namespace(settings)


def main(
    messages: Annotated[int, typer.Option(help="messages through the helpers")] = 500_000,
    baseline_messages: Annotated[
        int, typer.Option(help="messages through aiokafka's own batching")
    ] = 500_000,
    timeout: Annotated[float, typer.Option(help="seconds to wait for missing messages")] = 120,
) -> None:
    """Event bus throughput with commits and checks, against aiokafka's own batching."""

    async def both() -> None:
        baseline = await run_side("baseline", baseline_messages, timeout)
        rate = await run_side("helpers", messages, timeout)
        print(f"ratio_vs_aiokafka_batched: {rate / baseline:.2f}")
        print(f"bus_msgs_per_s: {rate:.0f}")

    asyncio.run(both())


if __name__ == "__main__":
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(main)
    app()
