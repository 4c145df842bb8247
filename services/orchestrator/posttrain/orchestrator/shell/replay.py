"""Rebuild pipeline state from the event log: how the orchestrator resumes after any crash."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from posttrain.events import DecodeError
from posttrain.events.kafka import KafkaSettings
from posttrain.events.kafka.logreader import Batch, read_partitions
from posttrain.events.topics import Topic
from posttrain.events.views import ViewDecoder
from posttrain.orchestrator.core.state import PipelineState, fold

log = logging.getLogger(__name__)


async def log_bounds(
    settings: KafkaSettings, tps: list[TopicPartition], timeout_s: float = 120.0
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """Where each partition's log starts, and where it ends once no transaction is open on it.

    A fenced predecessor's transaction is aborted when we initialise our producer, but the abort
    markers reach the partitions a moment later; until then the last stable offset stops short
    of decisions that were committed. Replaying up to it would forget them, so wait until the
    last stable offset has caught up with the high watermark."""
    # Neither consumer is assigned: an assigned one long-polls for records, and the broker
    # answers its offset requests only after the poll (half a second). A short retry backoff
    # because the first request of each only learns the topic's metadata.
    raw, committed = (
        AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            isolation_level=isolation,
            enable_auto_commit=False,
            retry_backoff_ms=10,
        )
        for isolation in ("read_uncommitted", "read_committed")
    )
    await asyncio.gather(raw.start(), committed.start())
    try:
        starts = await committed.beginning_offsets(tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            high, stable = await asyncio.gather(raw.end_offsets(tps), committed.end_offsets(tps))
            if all(stable[tp] >= high[tp] for tp in tps):
                return dict(starts), dict(stable)
            if loop.time() > deadline:
                raise TimeoutError(f"transactions still open on {tps} after {timeout_s} s")
            await asyncio.sleep(0.05)
    finally:
        await asyncio.gather(raw.stop(), committed.stop())


async def replay_partitions(
    settings: KafkaSettings, partitions: Iterable[int]
) -> tuple[dict[int, dict[str, PipelineState]], int]:
    """Fold every committed event of the given partitions of the log, up to the end offsets
    taken now; returns the states per partition and the number of events read.

    Only committed events count (``read_committed``): an aborted decision never happened."""
    topic = settings.topic(Topic.PIPELINE_EVENTS)
    tps = [TopicPartition(topic, p) for p in partitions]
    if not tps:
        return {}, 0
    starts, ends = await log_bounds(settings, tps)
    states: dict[int, dict[str, PipelineState]] = {tp.partition: {} for tp in tps}
    views = ViewDecoder()  # the fold only reads fields: views skip model validation
    count = 0
    # Replay builds a large, long-lived object graph: the cyclic GC would walk it again and again
    # (measured: apply 10x slower). Pause it while folding, and freeze what was built.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        async for batch in read_partitions(
            settings,
            topic,
            {tp.partition: starts[tp] for tp in tps},
            {tp.partition: ends[tp] for tp in tps},
        ):
            count += _fold_batch(batch, states[batch.partition], views, topic)
    finally:
        if gc_was_enabled:
            gc.enable()
    gc.freeze()  # the rebuilt state lives long: later collections need not walk it
    return states, count


def _fold_batch(
    batch: Batch, by_pipeline: dict[str, PipelineState], views: ViewDecoder, topic: str
) -> int:
    skipped = 0

    def skip(index: int, error: DecodeError) -> None:
        nonlocal skipped
        skipped += 1
        offset = batch.first_offset + index
        log.error(
            "unreadable event skipped in replay: %s[%s]@%s: %s",
            topic,
            batch.partition,
            offset,
            error,
        )

    envelopes = views.decode_all(batch.values, skip, batch.extra_headers)
    fold(envelopes, into=by_pipeline)
    return len(batch.values) - skipped
