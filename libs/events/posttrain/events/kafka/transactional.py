"""Consume-transform-produce in Kafka transactions: outputs and input offsets commit together.

Either a batch's outputs are visible to ``read_committed`` readers AND its input offsets are
committed, or neither: a crash before the commit aborts the transaction, and the input is read
again on restart. The transactional id must be stable across restarts of the same logical
processor, so that a restarted instance fences its dead predecessor and aborts its transaction
at once instead of leaving it open until it times out.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from posttrain.events.codec import DecodeError, decode, encode
from posttrain.events.envelope import Envelope
from posttrain.events.kafka.consumer import Received
from posttrain.events.kafka.dlq import dead_letter_headers
from posttrain.events.kafka.producer import EventProducer
from posttrain.events.kafka.settings import KafkaSettings
from posttrain.events.topics import Topic

log = logging.getLogger(__name__)

Output = tuple[Topic | str, Envelope[Any]]
Handler = Callable[[Received], Sequence[Output] | Awaitable[Sequence[Output]]]


class TransactionalProcessor:
    """Reads ``input_topics`` in a consumer group, calls ``handler`` per message and writes what
    it returns, committing outputs and offsets in one transaction per batch."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        input_topics: Iterable[Topic | str],
        group_id: str,
        transactional_id: str,
        handler: Handler,
        name: str,
        max_records: int = 500,
        before_commit: Callable[[], Awaitable[None] | None] | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self._group_id = settings.group(group_id)
        self._handler = handler
        self._max_records = max_records
        # A test seam: runs after outputs are sent, before the commit (e.g. to crash there).
        self._before_commit = before_commit
        self._consumer = AIOKafkaConsumer(
            *[settings.topic(t) for t in input_topics],
            bootstrap_servers=settings.bootstrap_servers,
            client_id=f"{settings.client_id}-{name}",
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        self.producer = EventProducer(settings, transactional_id=transactional_id, linger_ms=0)
        self.processed = 0
        self.dead_lettered = 0

    @property
    def consumer(self) -> AIOKafkaConsumer:
        return self._consumer

    async def start(self) -> None:
        await self.producer.start()
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()
        await self.producer.stop()

    async def process_batch(self, timeout_ms: int = 1000) -> int:
        """Process one batch of input in one transaction; returns how many messages it read."""
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=self._max_records)
        if not batches:
            return 0
        client = self.producer.client
        read = 0
        try:
            async with client.transaction():
                offsets: dict[TopicPartition, int] = {}
                for tp, records in batches.items():
                    for record in records:
                        await self._handle(record)
                        read += 1
                    offsets[tp] = records[-1].offset + 1
                await client.send_offsets_to_transaction(offsets, self._group_id)
                if self._before_commit is not None:
                    hook = self._before_commit()
                    if inspect.isawaitable(hook):
                        await hook
        except BaseException:
            # The transaction was aborted: rewind to the committed offsets so the batch is read
            # again rather than skipped.
            await self._rewind(list(batches))
            raise
        self.processed += read
        return read

    async def _handle(self, record: Any) -> None:
        client = self.producer.client
        try:
            envelope = decode(record.value, record.headers)
        except DecodeError as exc:
            self.dead_lettered += 1
            await client.send(
                self.settings.topic(Topic.DLQ),
                key=record.key,
                value=record.value,
                headers=dead_letter_headers(record, exc.reason, exc.detail, self.name),
            )
            return
        received = Received(
            envelope, record.topic, record.partition, record.offset, record.timestamp
        )
        result = self._handler(received)
        outputs = await result if inspect.isawaitable(result) else result
        for topic, out in outputs:
            key, value, headers = encode(out)
            await client.send(self.settings.topic(topic), key=key, value=value, headers=headers)

    async def _rewind(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            committed = await self._consumer.committed(tp)
            if committed is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Process batches until ``stop`` is set."""
        while stop is None or not stop.is_set():
            await self.process_batch(timeout_ms=200)
