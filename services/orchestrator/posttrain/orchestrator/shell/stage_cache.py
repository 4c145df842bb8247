"""The global stage cache, read in full from the compacted ``posttrain.stage.cache`` topic.

Each orchestrator instance writes the cache entries its decisions make (a ``cache: true`` stage
succeeded) in the transaction of those decisions, and reads every instance's: a stage finds an
identical earlier one whichever partition, instance, or restart produced it, and whether or not
that pipeline is still in memory. A hit not yet read is only a missed reuse (the stage runs), never
a wrong state: the decision is recorded on the log as ``StageCached``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from posttrain.events.kafka import EventConsumer, KafkaSettings
from posttrain.events.messages import StageOutputsCached
from posttrain.events.topics import Topic
from posttrain.orchestrator.core.decide import CacheEntry

log = logging.getLogger(__name__)


class StageCacheTable:
    """Every cache entry on the topic, by cache key (the latest one wins, as compaction keeps)."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._consumer = EventConsumer(
            settings,
            [Topic.STAGE_CACHE],
            group_id=None,
            name="orchestrator-stage-cache",
            isolation_level="read_committed",
        )
        self.entries: dict[str, CacheEntry] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="stage-cache-table")

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
            except Exception:  # a poison message is already parked; log anything else and go on
                log.exception("reading the stage cache failed")
                await asyncio.sleep(1)
                continue
            for received in batch:
                entry = received.envelope.data
                if isinstance(entry, StageOutputsCached):
                    self.entries[entry.cache_key] = CacheEntry(
                        dict(entry.outputs), entry.command_id
                    )
