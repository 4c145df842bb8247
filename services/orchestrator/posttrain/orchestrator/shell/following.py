"""A topic read in full, from its start and then as it grows, by a task in the background:
the agents table and the stage cache (compacted topics every instance reads whole)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from posttrain.events import DecodeError, Envelope
from posttrain.events.kafka import EventConsumer, KafkaSettings
from posttrain.events.topics import Topic
from posttrain.events.views import EnvelopeView, ViewDecoder

log = logging.getLogger(__name__)

# What a follower is handed: an envelope read with its type's view (fields only, no model
# validation) where the type has one, else the decoded envelope.
Followed = EnvelopeView | Envelope[Any]


class TopicFollower:
    """Reads ``topic`` in full (no consumer group, committed records only) and hands each
    batch to ``take``, which a subclass defines. Records are read with views: a thousand
    agents' heartbeats a second are most of what an orchestrator reads, and a view reads one
    ten times faster than the model does. A record that cannot be read is logged, counted in
    ``unreadable`` and skipped (the rest of its batch is still taken); a failed fetch is logged
    and tried again a second later."""

    def __init__(self, settings: KafkaSettings, topic: Topic, name: str) -> None:
        self._consumer = EventConsumer(
            settings, [topic], group_id=None, name=name, isolation_level="read_committed"
        )
        self._decoder = ViewDecoder()
        self._name = name
        self._task: asyncio.Task[None] | None = None
        self.unreadable = 0

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    async def _run(self) -> None:
        while True:
            try:
                records = await self._consumer.client.getmany(timeout_ms=500)
            except Exception:
                log.exception("%s: reading failed", self._name)
                await asyncio.sleep(1)
                continue
            self.take([m for batch in records.values() for m in self.read(batch)])

    def read(self, records: list[Any]) -> list[Followed]:
        """The messages of ``records`` (aiokafka's), in order, less those that cannot be read."""
        out: list[Followed] = []
        for record in records:
            try:
                out.append(self._decoder.decode(record.value, record.headers))
            except DecodeError as exc:
                self.unreadable += 1
                log.error(
                    "%s: unreadable record %s[%s]@%s skipped: %s",
                    self._name,
                    record.topic,
                    record.partition,
                    record.offset,
                    exc,
                )
        return out

    def take(self, batch: list[Followed]) -> None:
        """One batch read (possibly empty: the broker answered with nothing new)."""
        raise NotImplementedError
