"""The dead-letter topic: where a message goes when no consumer can read it, with the reason."""

from __future__ import annotations

from typing import Any, Protocol

from posttrain.events.topics import Topic

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
    """The original headers plus where the message came from and why it was parked."""
    headers = [(k, v) for k, v in (record.headers or ()) if not k.startswith("dlq-")]
    headers += [
        (HEADER_REASON, reason.encode()),
        (HEADER_DETAIL, detail[:2000].encode("utf-8", "replace")),
        (HEADER_TOPIC, record.topic.encode()),
        (HEADER_PARTITION, str(record.partition).encode()),
        (HEADER_OFFSET, str(record.offset).encode()),
        (HEADER_CONSUMER, consumer.encode()),
    ]
    return headers


class DeadLetterPublisher:
    """Parks unreadable records on ``posttrain.dlq`` (bytes kept as they were) and counts them."""

    def __init__(self, producer: Any, consumer: str) -> None:
        # ``producer`` is an EventProducer; typed loosely to avoid an import cycle.
        self._producer = producer
        self.consumer = consumer
        self.count = 0

    async def park(self, record: RawRecord, reason: str, detail: str) -> None:
        """Write the record to the DLQ and wait until the broker has it."""
        name = self._producer.settings.topic(Topic.DLQ)
        await self._producer.client.send_and_wait(
            name,
            key=record.key,
            value=record.value,
            headers=dead_letter_headers(record, reason, detail, self.consumer),
        )
        self.count += 1
