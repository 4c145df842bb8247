"""The read-model projection's catch-up of a long log, on the real broker and database: folded
many events at a time (each batch writes a pipeline's rows once, and only the stages its events
changed), it writes exactly the rows that folding each pipeline one event at a time gives; and
the other tasks of its event loop (the orchestrator's) run every few records meanwhile."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from posttrain.events import decode
from posttrain.events.kafka import KafkaSettings
from posttrain.events.topics import Topic
from posttrain.orchestrator.core.snapshot import archivable, decode_archived
from posttrain.orchestrator.core.state import PipelineState, apply
from posttrain.orchestrator.shell.projection import (
    YIELD_EVERY,
    Projection,
    history_row,
    pipeline_rows,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

GOLDEN = Path(__file__).parents[2] / "unit" / "orchestrator" / "golden"
COPIES = 40  # of each golden history: 240 pipelines, about 5,300 events
BATCH_EVENTS = 400  # so the catch-up takes a dozen batches, each pipeline spread over several


def _histories(run_id: str) -> dict[str, list[str]]:
    """Each golden history under ``COPIES`` pipeline ids of this test's own, every other copy
    cut at a random point: the rows must be right in the middle of a pipeline too (just
    submitted, a stage running, resumed), not only at its end."""
    rng = random.Random(15)
    histories = {}
    for path in sorted(GOLDEN.glob("*.jsonl")):
        lines = path.read_text().splitlines()
        pipeline = orjson.loads(lines[0])["data"]["pipeline_id"]
        for i in range(COPIES):
            copy = f"{run_id}-{pipeline}-{i}"
            end = len(lines) if i % 2 else rng.randint(1, len(lines))
            histories[copy] = [line.replace(pipeline, copy) for line in lines[:end]]
    return histories


async def _write_interleaved(settings: KafkaSettings, histories: dict[str, list[str]]) -> dict:
    """The histories on the events topic, the first event of every pipeline, then the second,
    ... (as pipelines that run at once); each pipeline's last event's offset."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, enable_idempotence=True
    )
    await producer.start()
    last: dict[str, Any] = {}
    try:
        for n in range(max(len(lines) for lines in histories.values())):
            for pid, lines in histories.items():
                if n < len(lines):
                    last[pid] = await producer.send(
                        settings.topic(Topic.PIPELINE_EVENTS), lines[n].encode(), key=pid.encode()
                    )
        await producer.flush()
        return {pid: (await sent).offset for pid, sent in last.items()}
    finally:
        await producer.stop()


def _one_event_at_a_time(lines: list[str]) -> tuple[PipelineState, list[tuple[Any, ...]]]:
    """A history folded one event at a time, each read as a validated model (not a view), and
    the history row of each event as it was applied."""
    state: PipelineState | None = None
    history = []
    for line in lines:
        envelope = decode(line.encode())
        if state is None:
            state = PipelineState(envelope.data.pipeline_id)
        apply(state, envelope)
        row = history_row(state, envelope)
        if row is not None:
            history.append(row)
    assert state is not None
    return state, history


_JSON_PIPELINE = {6, 7}  # layers, errors
_JSON_STAGE = {11, 15, 17}  # outputs, attempts, depends_on
_JSON_HISTORY = {7}  # data


def _comparable(row: Any, json_at: set[int]) -> tuple[Any, ...]:
    return tuple(orjson.loads(v) if i in json_at else v for i, v in enumerate(row))


async def test_a_catch_up_in_many_batches_writes_the_rows_of_a_one_event_at_a_time_fold(
    kafka_settings, database_url, run_id
):
    histories = _histories(run_id)
    last_offsets = await _write_interleaved(kafka_settings, histories)
    total = sum(len(lines) for lines in histories.values())

    projection = Projection(kafka_settings, database_url, name=run_id, batch_events=BATCH_EVENTS)
    await projection.start()
    batches = []
    try:

        async def caught_up() -> bool:
            read = await projection.step(timeout_ms=100)
            if read:
                batches.append(read)
            return projection.stats.events == total and await projection.behind() == 0

        await wait_for(caught_up, timeout=60, what="the projection to read the whole log")
        # Many batches, none larger than asked: every pipeline's events span several.
        assert len(batches) >= total // BATCH_EVENTS and max(batches) <= BATCH_EVENTS
        for pid, lines in histories.items():
            if archivable(_one_event_at_a_time(lines)[0]):
                assert pid not in projection.states, f"ended {pid} is still in memory"
    finally:
        await projection.stop()

    conn = await asyncpg.connect(database_url)
    try:
        for pid, lines in histories.items():
            state, history = _one_event_at_a_time(lines)
            expected, expected_stages = pipeline_rows(state)
            row = await conn.fetchrow(
                "SELECT pipeline_id, name, status, submitted_by, submitted_at, finished_at, "
                "layers, errors, version, state, state_offset FROM pipelines "
                "WHERE pipeline_id = $1",
                pid,
            )
            assert row is not None, pid
            assert _comparable(tuple(row)[:9], _JSON_PIPELINE) == _comparable(
                expected, _JSON_PIPELINE
            ), pid
            assert decode_archived(row["state"]) == state, pid
            assert row["state_offset"] == last_offsets[pid], pid

            stages = await conn.fetch(
                "SELECT pipeline_id, name, position, task, status, attempt, command_id, "
                "agent_id, job_id, started_at, finished_at, outputs, error, waiting_reason, "
                "cached_from, attempts, depends_on FROM pipeline_stages WHERE pipeline_id = $1 "
                "ORDER BY position",
                pid,
            )
            # The expected rows carry the pipeline's version (index 16) before depends_on.
            assert [_comparable((*s[:16], None, s[16]), _JSON_STAGE) for s in stages] == [
                _comparable((*s[:16], None, s[17]), _JSON_STAGE) for s in expected_stages
            ], pid

            rows = await conn.fetch(
                "SELECT pipeline_id, seq, at, type, stage, attempt, summary, data, event_id "
                "FROM pipeline_history WHERE pipeline_id = $1 ORDER BY seq",
                pid,
            )
            assert [_comparable(r, _JSON_HISTORY) for r in rows] == [
                _comparable(r, _JSON_HISTORY) for r in history
            ], pid
    finally:
        await conn.close()


async def test_a_long_batch_lets_the_tasks_it_shares_the_loop_with_run_every_few_records(
    kafka_settings, database_url, run_id
):
    """The orchestrator decides in the projection's event loop: while a batch of thousands of
    records is folded, another task of the loop gets to run at least every ``YIELD_EVERY``
    records read (it once waited for 2,000, tens of milliseconds, many times a second)."""
    histories = _histories(run_id)
    await _write_interleaved(kafka_settings, histories)
    total = sum(len(lines) for lines in histories.values())

    projection = Projection(kafka_settings, database_url, name=run_id)
    await projection.start()
    read_between: list[int] = []  # records the projection read between two turns of the other
    done = asyncio.Event()

    async def other_task() -> None:
        seen = projection.stats.events
        while not done.is_set():
            await asyncio.sleep(0)
            read_between.append(projection.stats.events - seen)
            seen = projection.stats.events
        read_between.append(projection.stats.events - seen)

    other = asyncio.create_task(other_task())
    try:

        async def caught_up() -> bool:
            await projection.step(timeout_ms=100)
            return projection.stats.events == total and await projection.behind() == 0

        await wait_for(caught_up, timeout=60, what="the projection to read the whole log")
    finally:
        done.set()
        await other
        await projection.stop()
    assert sum(read_between) == total
    # A few dozen records at most (``YIELD_EVERY``), never the thousands of one read.
    assert max(read_between) <= min(YIELD_EVERY, 100), max(read_between)


async def test_at_the_logs_end_a_batch_takes_in_what_arrives_soon_after_its_first_read(
    kafka_settings, database_url, run_id
):
    """A running pipeline's events come a few at a time: at the log's end a batch gathers what
    arrives within ``tail_window_s`` of its first read and writes the pipeline's rows once for
    all of it (one read per batch wrote them again for every event)."""
    path = GOLDEN / "seed_pipeline.jsonl"
    lines = path.read_text().splitlines()
    pipeline = orjson.loads(lines[0])["data"]["pipeline_id"]
    pid = f"{run_id}-{pipeline}"
    lines = [line.replace(pipeline, pid) for line in lines]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap_servers)
    await producer.start()

    async def send(line: str) -> None:
        await producer.send_and_wait(
            kafka_settings.topic(Topic.PIPELINE_EVENTS), line.encode(), key=pid.encode()
        )

    projection = Projection(kafka_settings, database_url, name=run_id, tail_window_s=3.0)
    await projection.start()
    try:
        await send(lines[0])

        async def first_read() -> bool:
            await projection.step(timeout_ms=100)
            return projection.stats.events == 1

        await wait_for(first_read, timeout=30, what="the projection to read the submission")
        batch = asyncio.create_task(projection.step(timeout_ms=5_000))
        await send(lines[1])
        await wait_for(
            lambda: projection.stats.events == 2, timeout=10, what="the batch's first read"
        )
        assert not batch.done()  # still gathering, its window open
        await send(lines[2])
        assert await asyncio.wait_for(batch, 30) == 2  # both events, in one batch
    finally:
        await producer.stop()
        await projection.stop()
    conn = await asyncpg.connect(database_url)
    try:
        version = await conn.fetchval("SELECT version FROM pipelines WHERE pipeline_id = $1", pid)
    finally:
        await conn.close()
    expected, _ = _one_event_at_a_time(lines[:3])
    assert version == expected.version == 3
