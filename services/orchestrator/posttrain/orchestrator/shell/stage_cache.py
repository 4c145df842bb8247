"""The global stage cache, read in full from the compacted ``posttrain.stage.cache`` topic.

Each orchestrator instance writes the cache entries its decisions make (a ``cache: true`` stage
succeeded) in the transaction of those decisions, and reads every instance's: a stage finds an
identical earlier one whichever partition, instance, or restart produced it, and whether or not
that pipeline is still in memory. A hit not yet read is only a missed reuse (the stage runs), never
a wrong state: the decision is recorded on the log as ``StageCached``.
"""

from __future__ import annotations

from posttrain.events.kafka import KafkaSettings
from posttrain.events.messages import StageOutputsCached
from posttrain.events.topics import Topic
from posttrain.orchestrator.core.decide import CacheEntry
from posttrain.orchestrator.shell.following import Followed, TopicFollower


class StageCacheTable(TopicFollower):
    """Every cache entry on the topic, by cache key (the latest one wins, as compaction keeps)."""

    def __init__(self, settings: KafkaSettings) -> None:
        super().__init__(settings, Topic.STAGE_CACHE, "orchestrator-stage-cache")
        self.entries: dict[str, CacheEntry] = {}

    def take(self, batch: list[Followed]) -> None:
        for envelope in batch:
            if envelope.type == StageOutputsCached.TYPE:
                entry = envelope.data  # the message's view: its fields
                self.entries[entry.cache_key] = CacheEntry(dict(entry.outputs), entry.command_id)
