"""What must hold after any run of the platform, however many of its processes were killed: each
check reads what the run left (the event log, the metrics topic and table, the stage processes'
witness file, the alerts a webhook received) and returns its violations, one sentence each, so
that a test asserts an empty list and a benchmark counts them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from posttrain.events import decode
from posttrain.events.kafka import KafkaSettings
from posttrain.events.topics import TOPICS, Topic

# The order a stage attempt's events take on the log.
STAGE_ORDER = ("StageDispatched", "StageStarted", "StageSucceeded")


async def read_topic(settings: KafkaSettings, topic: Topic) -> list[tuple[int, Any]]:
    """Every committed message of ``topic`` in ``settings``' namespace as (partition, envelope),
    each partition in its order."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    found: list[tuple[int, Any]] = []
    try:
        name = settings.topic(topic)
        tps = [TopicPartition(name, p) for p in range(TOPICS[topic].partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while True:
            for tp, records in (await consumer.getmany(timeout_ms=300)).items():
                found.extend((tp.partition, decode(r.value, r.headers)) for r in records)
            positions = {tp: await consumer.position(tp) for tp in ends}
            if all(positions[tp] >= end for tp, end in ends.items()):
                break
    finally:
        await consumer.stop()
    return found


def pipeline_succeeded(events: list[Any], pipeline_id: str) -> list[str]:
    ends = [
        e.type
        for e in events
        if e.type in ("PipelineSucceeded", "PipelineFailed", "PipelineCancelled")
        and e.data.pipeline_id == pipeline_id
    ]
    if ends != ["PipelineSucceeded"]:
        return [f"pipeline {pipeline_id} ended {ends or 'never'}, not once PipelineSucceeded"]
    return []


def events_unique_and_ordered(log: list[tuple[int, Any]], pipeline_id: str) -> list[str]:
    """Every event on the pipeline log once (by id); the pipeline's events on one partition,
    submitted first, ended last, and each stage attempt dispatched, started and succeeded in
    that order."""
    problems = [f"event {i} is on the log {n} times" for i, n in _counts(e.id for _, e in log)]
    mine = [(p, e) for p, e in log if getattr(e.data, "pipeline_id", None) == pipeline_id]
    partitions = {p for p, _ in mine}
    if len(partitions) != 1:
        problems.append(f"pipeline {pipeline_id}'s events on partitions {sorted(partitions)}")
    types = [e.type for _, e in mine]
    if not types or types[0] != "PipelineSubmitted":
        problems.append(f"pipeline {pipeline_id}'s first event is {types[:1]}")
    # Its last pipeline or stage event is the success: an action refused after it (a request
    # that arrived late) is in order, a stage that moved after it is not.
    lifecycle = [t for t in types if t.startswith(("Pipeline", "Stage"))]
    if lifecycle and lifecycle[-1] != "PipelineSucceeded":
        problems.append(f"pipeline {pipeline_id}'s last lifecycle event is {lifecycle[-1]}")
    seen: dict[tuple[str, int], list[str]] = defaultdict(list)
    for _, e in mine:
        # Stage events of an attempt (a StageWaiting, about a stage not yet placed, has none).
        attempt = getattr(e.data, "attempt", None)
        order = seen[(e.data.stage, attempt)] if attempt is not None else None
        if e.type == "StageRejected" and order and order[-1] == "StageDispatched":
            # The agent refused the placement (a race on its capacity): the attempt is placed
            # again, so its next dispatch follows this one rightly.
            order.pop()
        elif e.type in STAGE_ORDER and order is not None:
            order.append(e.type)
    for (stage, attempt), order in seen.items():
        ranks = [STAGE_ORDER.index(t) for t in order]
        if ranks != sorted(ranks) or len(set(order)) != len(order):
            problems.append(f"{stage} attempt {attempt}: events in the order {order}")
    return problems


def no_attempt_ran_twice(witness: Sequence[Mapping[str, Any]], events: list[Any]) -> list[str]:
    """From the stage processes' own witness lines: each (stage, attempt) started once, apart
    from relaunches that resume from a checkpoint (a pause and its resume); and every attempt
    the log says succeeded was started by a stage process."""
    problems: list[str] = []
    fresh = Counter((w["stage"], w["attempt"]) for w in witness if not w.get("resume_from"))
    problems += [f"{s} attempt {a} started {n} times" for (s, a), n in fresh.items() if n > 1]
    launches = Counter((w["stage"], w["attempt"], w["launch"]) for w in witness)
    problems += [
        f"{s} attempt {a} launch {n} started {k} times"
        for (s, a, n), k in launches.items()
        if k > 1
    ]
    started = {(w["stage"], w["attempt"]) for w in witness}
    for e in events:
        if e.type == "StageSucceeded" and (e.data.stage, e.data.attempt) not in started:
            problems.append(f"{e.data.stage} attempt {e.data.attempt} succeeded with no witness")
    return problems


def metrics_exactly_once(
    emitted: Iterable[Any], stored: Mapping[str, list[Any]], jobs: Iterable[str]
) -> list[str]:
    """The table holds each emitted point exactly once: per job, the steps of the distinct
    points sent on the metrics topic (by source and sequence number; a producer may send a
    message twice) against the steps of the stored rows."""
    sent: dict[str, dict[tuple[str, int], int]] = defaultdict(dict)
    for message in emitted:
        for offset, point in enumerate(message.points):
            sent[message.job_id][(message.source, message.first_seq + offset)] = point.step
    problems: list[str] = []
    for job in jobs:
        want = Counter(sent.get(job, {}).values())
        rows = stored.get(job, [])
        have = Counter(r.point.step for r in rows)
        keys = _counts((r.source, r.seq) for r in rows)
        problems += [f"{job}: point {k} stored {n} times" for k, n in keys]
        if not want:
            problems.append(f"{job}: no point was emitted")
        if want != have:
            missing = sorted((want - have).elements())[:10]
            extra = sorted((have - want).elements())[:10]
            problems.append(
                f"{job}: {sum(want.values())} points emitted, {sum(have.values())} stored "
                f"(steps missing {missing}, extra {extra})"
            )
    return problems


def alerts_once(deliveries: Mapping[str, int]) -> list[str]:
    """No alert delivered twice (by anomaly id, per channel's receiver)."""
    return [f"alert for anomaly {a} delivered {n} times" for a, n in deliveries.items() if n > 1]


def actions_answered(events: list[Any], pipeline_id: str) -> list[str]:
    """Every action requested for the pipeline has its outcome on the log (applied or
    refused, with the reason)."""
    requested = {
        e.data.action_id: e.data
        for e in events
        if e.type == "ActionRequested"
        and e.data.pipeline_id == pipeline_id
        and not getattr(e.data, "dry_run", False)
    }
    answered = {
        e.data.action_id
        for e in events
        if e.type in ("ActionApplied", "ActionRefused") and e.data.pipeline_id == pipeline_id
    }
    return [
        f"action {i} ({r.action} on {r.stage} attempt {r.attempt}) requested, no outcome"
        for i, r in requested.items()
        if i not in answered
    ]


def _counts(values: Iterable[Any]) -> list[tuple[Any, int]]:
    return [(v, n) for v, n in Counter(values).items() if n > 1]
