"""The read-model projection bounded by active work, on the real broker and database: a restarted
projection resumes from its saved offsets, loads an old pipeline's state from its row when an
event about it arrives, keeps no ended pipeline in memory, and refolds a partition (with a
warning) when a row's state cannot be read; the rows always equal a fold of the whole log."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from posttrain.events import decode
from posttrain.events.kafka import KafkaSettings
from posttrain.events.kafka.producer import partition_for
from posttrain.events.topics import PIPELINE_PARTITIONS, Topic
from posttrain.orchestrator.core.snapshot import archivable, decode_archived
from posttrain.orchestrator.core.state import PipelineState, apply
from posttrain.orchestrator.shell.projection import Projection, history_row, pipeline_rows
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

GOLDEN = Path(__file__).parents[2] / "unit" / "orchestrator" / "golden"
COPIES = 3


def _histories(run_id: str) -> dict[str, list[str]]:
    """Each golden history under ``COPIES`` pipeline ids of this test's own (the database is
    shared by the run's tests): id -> its events, as the recorded lines."""
    histories = {}
    for path in sorted(GOLDEN.glob("*.jsonl")):
        lines = path.read_text().splitlines()
        pipeline = orjson.loads(lines[0])["data"]["pipeline_id"]
        for i in range(COPIES):
            copy = f"{run_id}-{pipeline}-{i}"
            histories[copy] = [line.replace(pipeline, copy) for line in lines]
    return histories


async def _write(settings: KafkaSettings, histories: dict[str, list[str]]) -> int:
    """The histories' lines on the events topic, keyed by pipeline; how many."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, enable_idempotence=True
    )
    await producer.start()
    written = 0
    try:
        for pid, lines in histories.items():
            for line in lines:
                await producer.send(
                    settings.topic(Topic.PIPELINE_EVENTS), line.encode(), key=pid.encode()
                )
                written += 1
        await producer.flush()
    finally:
        await producer.stop()
    return written


def _fold(lines: list[str]) -> tuple[PipelineState, list[tuple[int, str]]]:
    """A history's state folded from its first event, and its history rows' (seq, type)."""
    state: PipelineState | None = None
    history = []
    for line in lines:
        envelope = decode(line.encode())
        if state is None:
            state = PipelineState(envelope.data.pipeline_id)
        apply(state, envelope)
        row = history_row(state, envelope)
        if row is not None:
            history.append((row[1], row[3]))
    assert state is not None
    return state, history


async def _caught_up(projection: Projection) -> None:
    async def done() -> bool:
        await projection.step(timeout_ms=100)
        return await projection.behind() == 0

    await wait_for(done, timeout=30, what="the projection to read the whole log")


async def _assert_rows_equal_the_whole_fold(
    conn: asyncpg.Connection, histories: dict[str, list[str]]
) -> None:
    for pid, lines in histories.items():
        state, history = _fold(lines)
        expected, expected_stages = pipeline_rows(state)
        row = await conn.fetchrow("SELECT * FROM pipelines WHERE pipeline_id = $1", pid)
        assert row is not None, pid
        assert (row["status"], row["version"], row["finished_at"]) == (
            expected[2],
            expected[8],
            expected[5],
        ), pid
        assert orjson.loads(row["errors"]) == orjson.loads(expected[7])
        # The state it holds is the whole fold's, readable again.
        assert decode_archived(row["state"]) == state, pid
        stages = await conn.fetch(
            "SELECT name, status, attempt, outputs, error, attempts FROM pipeline_stages "
            "WHERE pipeline_id = $1 ORDER BY position",
            pid,
        )
        assert [
            (s["name"], s["status"], s["attempt"], orjson.loads(s["outputs"]), s["error"])
            for s in stages
        ] == [(s[1], s[4], s[5], orjson.loads(s[11]), s[12]) for s in expected_stages], pid
        assert [
            (r["seq"], r["type"])
            for r in await conn.fetch(
                "SELECT seq, type FROM pipeline_history WHERE pipeline_id = $1 ORDER BY seq", pid
            )
        ] == history, pid


def _cut(histories: dict[str, list[str]], seed: int) -> tuple[dict[str, list[str]], ...]:
    """Each history cut at a random point (its first event always in the head)."""
    rng = random.Random(seed)
    cuts = {pid: rng.randint(1, len(lines)) for pid, lines in histories.items()}
    head = {pid: lines[: cuts[pid]] for pid, lines in histories.items()}
    tail = {pid: lines[cuts[pid] :] for pid, lines in histories.items() if lines[cuts[pid] :]}
    return head, tail


def _held_only_if_active(projection: Projection, histories: dict[str, list[str]]) -> None:
    for pid, lines in histories.items():
        state, _ = _fold(lines)
        if archivable(state):
            assert pid not in projection.states, f"ended {pid} is still in memory"


async def test_a_restarted_projection_resumes_from_its_offsets_and_loads_old_pipelines(
    kafka_settings, database_url, run_id
):
    histories = _histories(run_id)
    head, tail = _cut(histories, seed=15)
    assert tail, "the cut leaves events for after the restart"
    head_events = await _write(kafka_settings, head)

    first = Projection(kafka_settings, database_url, name=run_id)
    await first.start()
    try:
        assert first.stats.resumed_from == {}  # nothing saved: from the log's beginning
        await _caught_up(first)
        assert first.stats.events == head_events
        _held_only_if_active(first, head)
        assert first.stats.states_evicted > 0
    finally:
        await first.stop()

    tail_events = await _write(kafka_settings, tail)
    second = Projection(kafka_settings, database_url, name=run_id)
    await second.start()
    try:
        # It starts where the first one stopped, on every partition it wrote...
        assert sum(second.stats.resumed_from.values()) == head_events
        await _caught_up(second)
        # ... so it reads only what came after, and it loaded the pipelines those were about.
        assert second.stats.events == tail_events < head_events + tail_events
        assert second.stats.states_loaded == len(tail)
        assert second.stats.refolds == 0
        _held_only_if_active(second, histories)
    finally:
        await second.stop()

    conn = await asyncpg.connect(database_url)
    try:
        await _assert_rows_equal_the_whole_fold(conn, histories)
    finally:
        await conn.close()


async def test_an_unreadable_state_refolds_its_partition_and_never_writes_a_wrong_row(
    kafka_settings, database_url, run_id, caplog
):
    histories = _histories(run_id)
    head, tail = _cut(histories, seed=16)
    await _write(kafka_settings, head)
    first = Projection(kafka_settings, database_url, name=run_id)
    await first.start()
    try:
        await _caught_up(first)
    finally:
        await first.stop()

    # One row's state is corrupt, another's missing (as rows written before states were kept).
    corrupt, missing = sorted(tail)[:2]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE pipelines SET state = '\\x41deadbeef'::bytea WHERE pipeline_id = $1", corrupt
        )
        await conn.execute(
            "UPDATE pipelines SET state = NULL, state_offset = NULL WHERE pipeline_id = $1",
            missing,
        )
        await _write(kafka_settings, tail)
        caplog.set_level(logging.WARNING, logger="posttrain.orchestrator.shell.projection")
        second = Projection(kafka_settings, database_url, name=run_id)
        await second.start()
        try:
            await _caught_up(second)
            partitions = {
                partition_for(p.encode(), PIPELINE_PARTITIONS) for p in (corrupt, missing)
            }
            assert second.stats.refolds == len(partitions)
            assert f"the state of {corrupt} cannot be read" in caplog.text
            _held_only_if_active(second, histories)
        finally:
            await second.stop()
        await _assert_rows_equal_the_whole_fold(conn, histories)
        # The refold saved its position again: a third start resumes at the log's end.
        third = Projection(kafka_settings, database_url, name=run_id)
        await third.start()
        try:
            assert await third.behind() == 0
        finally:
            await third.stop()
    finally:
        await conn.close()


async def test_running_pipelines_beyond_the_bound_leave_memory_and_come_back_from_their_rows(
    kafka_settings, database_url, run_id
):
    histories = _histories(run_id)
    head, tail = _cut(histories, seed=17)
    await _write(kafka_settings, head)
    projection = Projection(kafka_settings, database_url, name=run_id, max_pipelines=2)
    await projection.start()
    try:
        await _caught_up(projection)
        assert len(projection.states) <= 2 and projection.stats.live_evicted > 0
        await _write(kafka_settings, tail)
        await _caught_up(projection)
        assert len(projection.states) <= 2
        assert projection.stats.states_loaded > 0
    finally:
        await projection.stop()
    conn = await asyncpg.connect(database_url)
    try:
        await _assert_rows_equal_the_whole_fold(conn, histories)
    finally:
        await conn.close()
