"""Read what the trainer agent put on the real broker: metric points, stage reports, heartbeats."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer

from posttrain.events import Envelope, decode
from posttrain.events.kafka import KafkaSettings
from posttrain.events.messages import MetricPoint, MetricsReported
from posttrain.events.topics import Topic
from tests.waiting import wait_for


class TopicReader:
    """Every message of one topic from the beginning, decoded, as it arrives."""

    def __init__(self, settings: KafkaSettings, topic: Topic) -> None:
        self.topic = topic
        self._consumer = AIOKafkaConsumer(
            settings.topic(topic),
            bootstrap_servers=settings.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        self.envelopes: list[Envelope[Any]] = []

    async def __aenter__(self) -> TopicReader:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def poll(self) -> list[Envelope[Any]]:
        batches = await self._consumer.getmany(timeout_ms=100)
        for records in batches.values():
            for record in records:
                self.envelopes.append(decode(record.value, record.headers))
        return self.envelopes

    async def wait(
        self, predicate: Callable[[list[Any]], Any], timeout: float = 30.0, what: str = ""
    ) -> Any:
        """Wait until ``predicate(messages)`` is truthy; returns its value."""

        async def check() -> Any:
            await self.poll()
            return predicate([e.data for e in self.envelopes])

        return await wait_for(check, timeout=timeout, what=what or f"messages on {self.topic}")

    def messages(self, cls: type | None = None) -> list[Any]:
        data = [e.data for e in self.envelopes]
        return [m for m in data if cls is None or isinstance(m, cls)]


def points_by_key(messages: list[Any], job_id: str) -> dict[tuple[str, int], MetricPoint]:
    """Metric points of a job by their identity (source, seq); a redelivered point counts once."""
    out: dict[tuple[str, int], MetricPoint] = {}
    for m in messages:
        if isinstance(m, MetricsReported) and m.job_id == job_id:
            for i, point in enumerate(m.points):
                out[(m.source, m.first_seq + i)] = point
    return out


def reports_for(messages: list[Any], command_id: str, type_name: str | None = None) -> list[Any]:
    """Stage reports about one command, optionally of one type, in arrival order."""
    return [
        m
        for m in messages
        if getattr(m, "command_id", None) == command_id
        and (type_name is None or type_name == m.TYPE)
    ]


def finished(messages: list[Any], command_id: str) -> Any:
    """The first StageSucceeded/StageFailed of a command, or None."""
    for m in reports_for(messages, command_id):
        if m.TYPE in ("StageSucceeded", "StageFailed"):
            return m
    return None


def quarter_means(values: list[float]) -> tuple[float, float]:
    """Mean of the first and of the last quarter of a series."""
    q = max(1, len(values) // 4)
    return sum(values[:q]) / q, sum(values[-q:]) / q
