"""The read model: pipelines and stages projected from the event log into PostgreSQL.

The projection folds the log with the same ``apply`` as the orchestrator and writes whole-row
snapshots of the pipelines each batch touched, with the log offsets, in one PostgreSQL
transaction. A snapshot carries the number of events it reflects, and a row never moves back to
an older one: projecting is idempotent, so a restart simply reads the log again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from posttrain.events import DecodeError, decode
from posttrain.events.kafka import KafkaSettings
from posttrain.events.topics import TOPICS, Topic
from posttrain.orchestrator.core.state import PipelineState, apply
from posttrain.orchestrator.core.view import pipeline_view

log = logging.getLogger(__name__)

_UPSERT_PIPELINE = """
INSERT INTO pipelines (pipeline_id, name, status, submitted_by, submitted_at, finished_at,
                       layers, errors, version, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9, now())
ON CONFLICT (pipeline_id) DO UPDATE SET
    name = EXCLUDED.name, status = EXCLUDED.status, submitted_by = EXCLUDED.submitted_by,
    submitted_at = EXCLUDED.submitted_at, finished_at = EXCLUDED.finished_at,
    layers = EXCLUDED.layers, errors = EXCLUDED.errors, version = EXCLUDED.version,
    updated_at = now()
WHERE pipelines.version <= EXCLUDED.version
"""

_UPSERT_STAGE = """
INSERT INTO pipeline_stages (pipeline_id, name, position, task, status, attempt, command_id,
                             agent_id, job_id, started_at, finished_at, outputs, error,
                             waiting_reason, cached_from, attempts, depends_on)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb, $13, $14, $15, $16::jsonb,
       $18::jsonb
WHERE (SELECT version FROM pipelines WHERE pipeline_id = $1) = $17
ON CONFLICT (pipeline_id, name) DO UPDATE SET
    position = EXCLUDED.position, task = EXCLUDED.task, status = EXCLUDED.status,
    attempt = EXCLUDED.attempt, command_id = EXCLUDED.command_id, agent_id = EXCLUDED.agent_id,
    job_id = EXCLUDED.job_id, started_at = EXCLUDED.started_at,
    finished_at = EXCLUDED.finished_at, outputs = EXCLUDED.outputs, error = EXCLUDED.error,
    waiting_reason = EXCLUDED.waiting_reason, cached_from = EXCLUDED.cached_from,
    attempts = EXCLUDED.attempts, depends_on = EXCLUDED.depends_on
"""

_SAVE_OFFSET = """
INSERT INTO projection_offsets (projection, topic, partition, next_offset)
VALUES ($1, $2, $3, $4)
ON CONFLICT (projection, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset
"""


def _time(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def pipeline_rows(state: PipelineState) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
    """The pipelines row and pipeline_stages rows of a state."""
    view = pipeline_view(state)
    pipeline = (
        state.pipeline_id,
        state.name,
        view["status"],
        state.submitted_by,
        _time(state.submitted_at),
        _time(state.finished_at),
        _json(state.layers),
        _json(state.errors),
        state.version,
    )
    stages = [
        (
            state.pipeline_id,
            s["name"],
            i,
            s["task"],
            s["status"],
            s["attempt"],
            s["command_id"],
            s["agent_id"],
            s["job_id"],
            _time(s["started_at"]),
            _time(s["finished_at"]),
            _json(s["outputs"]),
            s["error"],
            s["waiting_reason"],
            s["cached_from"],
            _json(s["attempts"]),
            state.version,
            _json(s["depends_on"]),
        )
        for i, s in enumerate(view["stages"])
    ]
    return pipeline, stages


class Projection:
    def __init__(self, settings: KafkaSettings, database_url: str, name: str = "pipelines") -> None:
        self.settings = settings
        self.database_url = database_url
        self.name = name
        self.states: dict[str, PipelineState] = {}
        self._pool: asyncpg.Pool | None = None
        self._topic = settings.topic(Topic.PIPELINE_EVENTS)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            client_id=f"{settings.client_id}-projection",
            enable_auto_commit=False,
            isolation_level="read_committed",
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(self.database_url, min_size=1, max_size=2)
        await self._consumer.start()
        partitions = TOPICS[Topic.PIPELINE_EVENTS].partitions
        tps = [TopicPartition(self._topic, p) for p in range(partitions)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)

    async def stop(self) -> None:
        await self._consumer.stop()
        if self._pool is not None:
            await self._pool.close()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self.step()
        finally:
            await self.stop()

    async def step(self, timeout_ms: int = 200) -> int:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=5000)
        touched: dict[str, PipelineState] = {}
        offsets: dict[int, int] = {}
        for tp, records in batches.items():
            for record in records:
                offsets[tp.partition] = record.offset + 1
                try:
                    envelope = decode(record.value, record.headers)
                except DecodeError as exc:
                    log.error("unreadable event skipped by the projection: %s", exc)
                    continue
                pid = envelope.data.pipeline_id
                state = self.states.get(pid)
                if state is None:
                    state = self.states[pid] = PipelineState(pid)
                apply(state, envelope)
                touched[pid] = state
        if offsets:
            await self._write(touched.values(), offsets)
        return sum(len(r) for r in batches.values())

    async def _write(self, states: Iterable[PipelineState], offsets: dict[int, int]) -> None:
        assert self._pool is not None
        pipelines, stages = [], []
        for state in states:
            if not state.stages and not state.errors:
                continue
            row, stage_rows = pipeline_rows(state)
            pipelines.append(row)
            stages.extend(stage_rows)
        async with self._pool.acquire() as conn, conn.transaction():
            if pipelines:
                await conn.executemany(_UPSERT_PIPELINE, pipelines)
                await conn.executemany(_UPSERT_STAGE, stages)
            await conn.executemany(
                _SAVE_OFFSET, [(self.name, self._topic, p, o) for p, o in offsets.items()]
            )
