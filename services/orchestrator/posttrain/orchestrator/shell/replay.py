"""Rebuild pipeline state from the event log: how the orchestrator resumes after any crash."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from posttrain.events import DecodeError, decode
from posttrain.events.kafka import KafkaSettings
from posttrain.events.topics import Topic
from posttrain.orchestrator.core.state import PipelineState, apply

log = logging.getLogger(__name__)


async def stable_end_offsets(
    settings: KafkaSettings,
    committed_reader: AIOKafkaConsumer,
    tps: list[TopicPartition],
    timeout_s: float = 120.0,
) -> dict[TopicPartition, int]:
    """The end of each partition once no transaction is open on it.

    A fenced predecessor's transaction is aborted when we initialise our producer, but the abort
    markers reach the partitions a moment later; until then the last stable offset stops short
    of decisions that were committed. Replaying up to it would forget them, so wait until the
    last stable offset has caught up with the high watermark."""
    raw = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        isolation_level="read_uncommitted",
        enable_auto_commit=False,
    )
    await raw.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            high = await raw.end_offsets(tps)
            stable = await committed_reader.end_offsets(tps)
            if all(stable[tp] >= high[tp] for tp in tps):
                return dict(stable)
            if loop.time() > deadline:
                raise TimeoutError(f"transactions still open on {tps} after {timeout_s} s")
            await asyncio.sleep(0.05)
    finally:
        await raw.stop()


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
    probe = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await probe.start()
    try:
        probe.assign(tps)
        ends = await stable_end_offsets(settings, probe, tps)
    finally:
        await probe.stop()
    states, count = await _replay_here(settings, {tp.partition: ends[tp] for tp in tps})
    gc.freeze()  # the rebuilt state lives long: later collections need not walk it
    return states, count


async def _replay_here(
    settings: KafkaSettings, ends_by_partition: dict[int, int]
) -> tuple[dict[int, dict[str, PipelineState]], int]:
    topic = settings.topic(Topic.PIPELINE_EVENTS)
    tps = [TopicPartition(topic, p) for p in ends_by_partition]
    ends = {tp: ends_by_partition[tp.partition] for tp in tps}
    states: dict[int, dict[str, PipelineState]] = {tp.partition: {} for tp in tps}
    if not any(ends.values()):
        return states, 0  # an empty log (and aiokafka dislikes a consumer stopped at once)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-replay",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    count = 0
    # Replay builds a large, long-lived object graph: the cyclic GC would walk it again and again
    # (measured: apply 10x slower). Pause it while folding.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        consumer.assign(tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        if pending:
            await consumer.seek_to_beginning(*pending)
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=1000, max_records=50_000)
            for tp, records in batches.items():
                by_pipeline = states[tp.partition]
                end = ends[tp]
                for record in records:
                    if record.offset >= end:
                        break
                    try:
                        envelope = decode(record.value, record.headers)
                    except DecodeError as exc:
                        log.error(
                            "unreadable event skipped in replay: %s@%s: %s", tp, record.offset, exc
                        )
                        continue
                    pid = envelope.data.pipeline_id
                    state = by_pipeline.get(pid)
                    if state is None:
                        state = by_pipeline[pid] = PipelineState(pid)
                    apply(state, envelope)
                    count += 1
                if records and records[-1].offset + 1 >= end:
                    pending.discard(tp)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
    finally:
        if gc_was_enabled:
            gc.enable()
        await consumer.stop()
    return states, count
