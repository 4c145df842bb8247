"""A topic read in full, from its start and then as it grows, by a task in the background:
the agents table and the stage cache (compacted topics every instance reads whole)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from posttrain.events.kafka import EventConsumer, KafkaSettings, Received
from posttrain.events.topics import Topic

log = logging.getLogger(__name__)


class TopicFollower:
    """Reads ``topic`` in full (no consumer group, committed records only) and hands each
    batch to ``take``, which a subclass defines. A failed read is logged and tried again a
    second later: a poison message is already parked by the consumer."""

    def __init__(self, settings: KafkaSettings, topic: Topic, name: str) -> None:
        self._consumer = EventConsumer(
            settings, [topic], group_id=None, name=name, isolation_level="read_committed"
        )
        self._name = name
        self._task: asyncio.Task[None] | None = None

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
                batch = await self._consumer.getmany(timeout_ms=500)
            except Exception:
                log.exception("%s: reading failed", self._name)
                await asyncio.sleep(1)
                continue
            self.take(batch)

    def take(self, batch: list[Received]) -> None:
        """One batch read (possibly empty: the broker answered with nothing new)."""
        raise NotImplementedError
