"""The dead-letter topic: where a message goes when no consumer can read it, with the reason."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

from posttrain.events.kafka.producer import EventProducer
from posttrain.events.topics import Topic

log = logging.getLogger(__name__)

HEADER_REASON = "dlq-reason"
HEADER_DETAIL = "dlq-detail"
HEADER_TOPIC = "dlq-source-topic"
HEADER_PARTITION = "dlq-source-partition"
HEADER_OFFSET = "dlq-source-offset"
HEADER_CONSUMER = "dlq-consumer"


class RawRecord(Protocol):
    """What we need of a consumed record (aiokafka's ConsumerRecord has it)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Any: ...


def dead_letter_headers(
    record: RawRecord, reason: str, detail: str, consumer: str
) -> list[tuple[str, bytes]]:
    """The original headers plus where the message came from and why it was parked. Headers
    may be pairs (aiokafka) or a mapping (Faust)."""
    original = record.headers or ()
    pairs = original.items() if isinstance(original, Mapping) else original
    headers = [(k, v) for k, v in pairs if not k.startswith("dlq-")]
    headers += [
        (HEADER_REASON, reason.encode()),
        (HEADER_DETAIL, detail[:2000].encode("utf-8", "replace")),
        (HEADER_TOPIC, record.topic.encode()),
        (HEADER_PARTITION, str(record.partition).encode()),
        (HEADER_OFFSET, str(record.offset).encode()),
        (HEADER_CONSUMER, consumer.encode()),
    ]
    return headers


class Send(Protocol):
    """Writes one message to the dead-letter topic (a Faust topic's ``send`` is one)."""

    def __call__(
        self, *, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> Awaitable[Any]: ...


class DeadLetters:
    """Parks unreadable records on ``posttrain.dlq``, bytes kept as they were, and counts them:
    the one way every consumer does it. ``park`` makes one attempt; a shell that must not move
    past a record before the broker has it retries it (``posttrain.service.retry``)."""

    def __init__(self, send: Send, consumer: str) -> None:
        self._send = send
        self.consumer = consumer
        self.count = 0

    @classmethod
    def acknowledged(cls, producer: EventProducer, consumer: str) -> DeadLetters:
        """Through ``producer``, each park waiting until the broker has the message."""

        async def send(**message: Any) -> None:
            await producer.client.send_and_wait(producer.settings.topic(Topic.DLQ), **message)

        return cls(send, consumer)

    @classmethod
    def in_transaction(cls, producer: EventProducer, consumer: str) -> DeadLetters:
        """Through a transactional ``producer`` inside its open transaction: the park commits
        with the transaction's other outputs and offsets, or is aborted with them."""

        async def send(**message: Any) -> None:
            await producer.client.send(producer.settings.topic(Topic.DLQ), **message)

        return cls(send, consumer)

    async def park(self, record: RawRecord, reason: str, detail: str) -> None:
        """Write the record to the dead-letter topic with why, then log it."""
        await self._send(
            key=record.key,
            value=record.value,
            headers=dead_letter_headers(record, reason, detail, self.consumer),
        )
        self.count += 1
        log.warning(
            "unreadable message parked in the DLQ",
            extra={
                "consumer": self.consumer,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "reason": reason,
                "detail": detail[:500],
            },
        )
