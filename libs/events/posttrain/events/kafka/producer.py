"""The idempotent producer: one message with ``send``, many at broker speed with ``send_many``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from posttrain.events.codec import encode
from posttrain.events.envelope import Envelope
from posttrain.events.kafka.lifecycle import ClientLifecycle
from posttrain.events.kafka.settings import KafkaSettings
from posttrain.events.topics import Topic

# Large batches amortise per-request cost; the broker's default message.max.bytes is 1 MiB.
MAX_BATCH_BYTES = 512 * 1024
_PARTITION_CACHE_LIMIT = 100_000


Encoded = tuple[bytes, bytes, list[tuple[str, bytes]]]  # key, value, headers: ``encode``'s


class SentBatch(NamedTuple):
    """A record batch handed to the client: ``future`` is done when the broker has it."""

    future: asyncio.Future[Any]
    records: int

    def end(self) -> int:
        """The offset after the batch's last record (once ``future`` is done)."""
        return int(self.future.result().offset) + self.records


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2, as the Java client): the same key always lands on
    the same partition whichever client wrote it."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


class EventProducer(ClientLifecycle):
    """An idempotent producer (acks=all, no duplicates on retry) of envelopes.

    ``send`` waits for one message's acknowledgement. ``send_many`` encodes a batch, groups it
    by partition and hands whole record batches to the client, which is many times faster than
    one ``send`` per message; per-key order is kept because a key always maps to one partition.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        linger_ms: int = 5,
        transactional_id: str | None = None,
        max_request_size: int = 4 * MAX_BATCH_BYTES,
        **client_options: Any,
    ) -> None:
        self.settings = settings
        self._client = AIOKafkaProducer(
            **settings.client_options(),
            client_id=settings.client_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=linger_ms,
            max_batch_size=MAX_BATCH_BYTES,
            # Larger only where a topic takes larger records (the orchestrator's snapshots).
            max_request_size=max_request_size,
            # Namespaced like consumer groups: environments sharing a broker never fence each
            # other's producers.
            transactional_id=settings.group(transactional_id) if transactional_id else None,
            **client_options,
        )
        self._partitions: dict[str, int] = {}
        self._key_partition: dict[tuple[str, bytes], int] = {}

    @property
    def client(self) -> AIOKafkaProducer:
        """The underlying aiokafka producer (for transactions)."""
        return self._client

    async def send(self, topic: Topic | str, envelope: Envelope[Any]) -> tuple[int, int]:
        """Send one envelope and wait until the broker has it; returns (partition, offset)."""
        key, value, headers = encode(envelope)
        name = self.settings.topic(topic)
        partition = await self._partition(name, key)
        metadata = await self._client.send_and_wait(
            name, value=value, key=key, partition=partition, headers=headers
        )
        return metadata.partition, metadata.offset

    async def send_many(self, topic: Topic | str, envelopes: Iterable[Envelope[Any]]) -> int:
        """Send envelopes in record batches and wait for all acknowledgements; returns the count.

        Within one call, messages of one key keep their order."""
        encoded = [encode(envelope) for envelope in envelopes]
        return await self.send_encoded(topic, encoded)

    async def send_encoded(self, topic: Topic | str, encoded: Iterable[Encoded]) -> int:
        """``send_many`` for messages already encoded (key, value, headers)."""
        sent = await self.send_batches(topic, encoded)
        await asyncio.gather(*(batch.future for batch in sent))
        return sum(batch.records for batch in sent)

    async def send_batches(
        self, topic: Topic | str, encoded: Iterable[Encoded], *, partition: int | None = None
    ) -> list[SentBatch]:
        """Hand encoded messages to the client as record batches, by the key's partition (or
        all to ``partition``), without waiting for the broker; the batches, in order within
        each partition. In a transaction they commit or abort with it: this is how a
        transaction's many messages go out without a client ``send`` each."""
        name = self.settings.topic(topic)
        if partition is not None:
            return await self._send_partition(name, partition, list(encoded))
        partitions = await self._partition_count(name)
        cache = self._key_partition
        if len(cache) >= _PARTITION_CACHE_LIMIT:
            cache.clear()
        by_partition: dict[int, list[Encoded]] = {}
        for record in encoded:
            cache_key = (name, record[0])
            partition = cache.get(cache_key)
            if partition is None:
                partition = cache[cache_key] = partition_for(record[0], partitions)
            group = by_partition.get(partition)
            if group is None:
                group = by_partition[partition] = []
            group.append(record)
        # One partition after another, not gathered as tasks: handing a batch over does not
        # wait for the broker, and without a task switch between partitions a transaction adds
        # all of them in one AddPartitionsToTxn before any of its records leave.
        sent: list[SentBatch] = []
        for p, records in by_partition.items():
            sent.extend(await self._send_partition(name, p, records))
        return sent

    async def _send_partition(
        self, name: str, partition: int, records: list[Encoded]
    ) -> list[SentBatch]:
        sent: list[SentBatch] = []
        batch = self._client.create_batch()
        for key, value, headers in records:
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                count = batch.record_count()
                future = await self._client.send_batch(batch, name, partition=partition)
                sent.append(SentBatch(future, count))
                batch = self._client.create_batch()
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    raise ValueError(f"message of {len(value)} bytes exceeds the batch limit")
        if count := batch.record_count():
            future = await self._client.send_batch(batch, name, partition=partition)
            sent.append(SentBatch(future, count))
        return sent

    async def _partition_count(self, name: str) -> int:
        count = self._partitions.get(name)
        if count is None:
            count = len(await self._client.partitions_for(name))
            self._partitions[name] = count
        return count

    async def _partition(self, name: str, key: bytes) -> int:
        cached = self._key_partition.get((name, key))
        if cached is None:
            cached = partition_for(key, await self._partition_count(name))
            self._key_partition[(name, key)] = cached
        return cached

    async def flush(self) -> None:
        await self._client.flush()
