"""Consumers that hand out decoded envelopes and park what they cannot read in the DLQ."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition

from posttrain.events.codec import DecodeError, decode
from posttrain.events.envelope import Envelope
from posttrain.events.kafka.dlq import DeadLetters
from posttrain.events.kafka.lifecycle import ClientLifecycle
from posttrain.events.kafka.producer import EventProducer
from posttrain.events.kafka.settings import KafkaSettings
from posttrain.events.topics import Topic


class Received(NamedTuple):
    """A decoded message and where it was read from."""

    envelope: Envelope[Any]
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


class EventConsumer(ClientLifecycle):
    """Reads envelopes from topics; offsets are committed only when the caller says so.

    Reads committed data only by default (``read_committed``), so aborted transactions are never
    seen. A message that cannot be decoded is written to the dead-letter topic (and the write
    acknowledged) before the batch that skipped it is returned, so committing afterwards never
    loses it. ``group_id=None`` reads every partition without a consumer group.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topics: Iterable[Topic | str],
        *,
        group_id: str | None,
        name: str,
        dead_letters: EventProducer | None = None,
        isolation_level: str = "read_committed",
        auto_offset_reset: str = "earliest",
        **client_options: Any,
    ) -> None:
        self.settings = settings
        self.name = name
        self._topics = [settings.topic(t) for t in topics]
        self._client = AIOKafkaConsumer(
            **settings.client_options(),
            client_id=f"{settings.client_id}-{name}",
            group_id=settings.group(group_id) if group_id else None,
            enable_auto_commit=False,
            auto_offset_reset=auto_offset_reset,
            isolation_level=isolation_level,
            **client_options,
        )
        self._dlq = DeadLetters.acknowledged(dead_letters, name) if dead_letters else None
        self.undecodable = 0

    @property
    def client(self) -> AIOKafkaConsumer:
        return self._client

    @property
    def dead_lettered(self) -> int:
        return self._dlq.count if self._dlq else 0

    async def start(self, *, subscribe: bool = True) -> None:
        await super().start()
        if subscribe:
            self._client.subscribe(self._topics)

    async def getmany(
        self, timeout_ms: int = 1000, max_records: int | None = None
    ) -> list[Received]:
        """The next batch of decoded messages, in partition order."""
        batches = await self._client.getmany(timeout_ms=timeout_ms, max_records=max_records)
        out: list[Received] = []
        append = out.append
        # Per message, only what differs: the partition's names once per batch, and the tuple
        # made without NamedTuple's generated ``__new__``.
        make = Received._make
        for tp, records in batches.items():
            topic, partition = tp.topic, tp.partition
            for record in records:
                try:
                    envelope = decode(record.value, record.headers)
                except DecodeError as exc:
                    await self._dead_letter(record, exc)
                    continue
                append(make((envelope, topic, partition, record.offset, record.timestamp)))
        return out

    async def _dead_letter(self, record: Any, exc: DecodeError) -> None:
        self.undecodable += 1
        if self._dlq is None:
            raise RuntimeError(
                f"{self.name}: unreadable message at {record.topic}/{record.partition}"
                f"@{record.offset} ({exc}) and no dead-letter producer configured"
            ) from exc
        await self._dlq.park(record, exc.reason, exc.detail)

    async def __aiter__(self) -> AsyncIterator[Received]:
        while True:
            for received in await self.getmany():
                yield received

    async def commit(self) -> None:
        """Commit the positions of everything returned so far."""
        await self._client.commit()

    async def end_offsets(self) -> dict[TopicPartition, int]:
        """The current end of every assigned partition (for replay up to a point)."""
        return dict(await self._client.end_offsets(list(self._client.assignment())))
