"""The orchestrator's client: what another service or a user's program needs from it, and all
that the gateway, diagnostics and the SDK import from this distribution (never its shell).

- the validator: ``read_document`` (a pipeline document's shape, ``DocumentError`` naming the
  field), ``InvalidPipeline`` (every problem the DAG validator found, which ``aexecute``
  raises) and ``DagResolver``; the same code the orchestrator runs;
- the command sender: ``PipelineExecutor``;
- the read-model queries: status, list, history, agents, failed attempts.

The seed's Python API over the event-sourced orchestrator:

``PipelineExecutor(pipeline_uuid).execute(stages)`` validates the DAG here (the same validator
the orchestrator runs), submits it as a ``SubmitPipeline`` command and returns the id and the
execution layers; ``.resume()``, ``.cancel()`` and ``.retry_stage()`` send the matching
commands (and raise ``UnknownPipeline`` for a pipeline the read model does not know).
``get_pipeline_status(uuid)`` reads the read model in PostgreSQL.
Each call has an ``a``-prefixed coroutine twin for code already inside an event loop; the
blocking forms run on ``posttrain.events.runner`` (so they work under a running loop too).

Results carry the seed's keys beside ours: ``root_task_id`` and ``celery_task_id`` name our
units of work (the pipeline's id; each stage's current RunStage command), ``job_uuid`` a
stage's metrics job.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from posttrain.events import Envelope, Message
from posttrain.events.failures import mentions_oom
from posttrain.events.kafka import EventProducer, KafkaSettings
from posttrain.events.messages import (
    CancelPipeline,
    ResumePipeline,
    RetryStage,
    StageSpec,
    SubmitPipeline,
)
from posttrain.events.runner import run_sync
from posttrain.events.topics import Topic
from posttrain.orchestrator.core.dag import DagResolver, InvalidPipeline
from posttrain.orchestrator.core.document import DocumentError, PipelineDocument, read_document

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DagResolver",
    "DocumentError",
    "FailedAttempt",
    "InvalidPipeline",
    "PipelineDocument",
    "PipelineExecutor",
    "UnknownPipeline",
    "aget_oom_failures",
    "aget_pipeline_history",
    "aget_pipeline_status",
    "alast_history_seq",
    "alist_agents",
    "alist_pipelines",
    "get_pipeline_history",
    "get_pipeline_status",
    "list_agents",
    "read_document",
]

# Re-exported: callers that imported the default from here keep working.
from posttrain.service.settings import DEFAULT_DATABASE_URL as DEFAULT_DATABASE_URL
from posttrain.service.settings import database_url as _database_url


class UnknownPipeline(LookupError):
    """A resume, cancel or retry of a pipeline the platform does not know."""


class PipelineExecutor:
    def __init__(
        self,
        pipeline_uuid: str | None = None,
        *,
        settings: KafkaSettings | None = None,
        submitted_by: str | None = None,
        producer: EventProducer | None = None,
        database_url: str | None = None,
    ) -> None:
        self.pipeline_uuid = pipeline_uuid or uuid.uuid4().hex
        self.settings = settings or KafkaSettings.from_env(client_id="posttrain-sdk")
        self.submitted_by = submitted_by
        self.database_url = database_url
        # A started producer to send through: a server's, which checks what it is asked itself.
        self._producer = producer

    async def _require_known(self) -> None:
        """Raise ``UnknownPipeline`` unless the read model knows the pipeline (a command for an
        unknown one would only be refused on the orchestrator's record)."""
        if self._producer is not None:
            return
        if await aget_pipeline_status(self.pipeline_uuid, self.database_url) is None:
            raise UnknownPipeline(
                f"no pipeline {self.pipeline_uuid!r}: it was never submitted (or was submitted "
                "a moment ago and is not projected yet); `posttrain pipeline status ID` tells"
            )

    async def _send(self, message: Message) -> None:
        envelope = Envelope.create(message, key=self.pipeline_uuid)
        if self._producer is not None:
            await self._producer.send(Topic.PIPELINE_COMMANDS, envelope)
            return
        async with EventProducer(self.settings) as producer:
            await producer.send(Topic.PIPELINE_COMMANDS, envelope)

    async def aexecute(
        self,
        stages: Iterable[Mapping[str, Any] | StageSpec],
        *,
        name: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Validate and submit; raises ``InvalidPipeline`` listing every problem."""
        resolver = DagResolver(list(stages))
        layers = resolver.get_execution_layers()
        await self._send(
            SubmitPipeline(
                pipeline_id=self.pipeline_uuid,
                name=name or self.pipeline_uuid,
                stages=resolver.stages,
                submitted_by=self.submitted_by,
                settings=dict(settings or {}),
            )
        )
        # The seed's root task is the unit of work the whole plan hangs from: here the pipeline.
        return {
            "pipeline_uuid": self.pipeline_uuid,
            "root_task_id": self.pipeline_uuid,
            "layers": layers,
        }

    def execute(
        self,
        stages: Iterable[Mapping[str, Any] | StageSpec],
        *,
        name: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        return run_sync(self.aexecute(stages, name=name, settings=settings))

    async def aresume(self) -> None:
        await self._require_known()
        await self._send(
            ResumePipeline(pipeline_id=self.pipeline_uuid, requested_by=self.submitted_by)
        )

    def resume(self) -> None:
        """Run again every failed, cancelled or lost stage (and what waits on them)."""
        run_sync(self.aresume())

    async def acancel(self, reason: str = "") -> None:
        await self._require_known()
        await self._send(
            CancelPipeline(
                pipeline_id=self.pipeline_uuid, reason=reason, requested_by=self.submitted_by
            )
        )

    def cancel(self, reason: str = "") -> None:
        run_sync(self.acancel(reason))

    async def aretry_stage(self, stage: str) -> None:
        await self._require_known()
        await self._send(
            RetryStage(pipeline_id=self.pipeline_uuid, stage=stage, requested_by=self.submitted_by)
        )

    def retry_stage(self, stage: str) -> None:
        run_sync(self.aretry_stage(stage))


# An asyncpg connection, or a pool (the gateway's) to take one from; asyncpg is untyped.
Db = Any


@contextlib.asynccontextmanager
async def _connection(db: Db | None, database_url: str | None = None) -> AsyncIterator[Any]:
    """A connection for a query's block: from ``db`` (taken from it for the block if it is a
    pool), else one opened on ``database_url`` (or DATABASE_URL) and closed after."""
    if db is None:
        conn = await asyncpg.connect(_database_url(database_url))
        try:
            yield conn
        finally:
            await conn.close()
    elif isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db


async def aget_pipeline_status(
    pipeline_uuid: str, database_url: str | None = None, *, db: Db | None = None
) -> dict[str, Any] | None:
    """Status and, per stage, name, status, command id, agent, attempts, times; None if the
    pipeline is unknown (or not projected yet). Reads through ``db`` when given."""
    async with _connection(db, database_url) as conn:
        # Not the projection's own columns (its encoded state): only what the status shows.
        row = await conn.fetchrow(
            """
            SELECT pipeline_id, name, status, submitted_by, submitted_at, finished_at, layers,
                   errors
            FROM pipelines WHERE pipeline_id = $1
            """,
            pipeline_uuid,
        )
        if row is None:
            return None
        stages = await conn.fetch(
            "SELECT * FROM pipeline_stages WHERE pipeline_id = $1 ORDER BY position",
            pipeline_uuid,
        )
    return {
        **_summary(row),
        "celery_task_id": row["pipeline_id"],
        "layers": orjson.loads(row["layers"]),
        "errors": orjson.loads(row["errors"]),
        "stages": [
            {
                "name": s["name"],
                "task": s["task"],
                "depends_on": orjson.loads(s["depends_on"]),
                "status": s["status"],
                "task_id": s["command_id"],
                "celery_task_id": s["command_id"],
                "attempt": s["attempt"],
                "agent_id": s["agent_id"],
                "job_id": s["job_id"],
                "job_uuid": s["job_id"],
                "started_at": s["started_at"],
                "finished_at": s["finished_at"],
                "outputs": orjson.loads(s["outputs"]),
                "error": s["error"],
                "waiting_reason": s["waiting_reason"],
                "cached_from": s["cached_from"],
                "attempts": orjson.loads(s["attempts"]),
            }
            for s in stages
        ],
    }


async def alist_pipelines(
    db: Db, *, status: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """The latest submitted pipelines (optionally of one status), newest first: id, name,
    status, who submitted it, when it was submitted and finished."""
    rows = await db.fetch(
        """
        SELECT pipeline_id, name, status, submitted_by, submitted_at, finished_at
        FROM pipelines
        WHERE $1::text IS NULL OR status = $1
        ORDER BY submitted_at DESC NULLS LAST, pipeline_id
        LIMIT $2
        """,
        status,
        limit,
    )
    return [_summary(row) for row in rows]


def _summary(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "pipeline_uuid": row["pipeline_id"],
        "name": row["name"],
        "status": row["status"],
        "submitted_by": row["submitted_by"],
        "submitted_at": row["submitted_at"],
        "finished_at": row["finished_at"],
    }


def get_pipeline_status(
    pipeline_uuid: str, database_url: str | None = None
) -> dict[str, Any] | None:
    return run_sync(aget_pipeline_status(pipeline_uuid, database_url))


# --- history and agents (the read model the projection writes) -------------------------------


async def aget_pipeline_history(
    pipeline_uuid: str,
    *,
    after: int | None = None,
    limit: int = 100,
    database_url: str | None = None,
    db: Db | None = None,
) -> dict[str, Any] | None:
    """A pipeline's events in log order, ``limit`` at most with numbers above ``after``: each
    ``seq``, ``at``, ``type`` (the event's type name), ``stage``, ``attempt``, ``summary`` (one
    line) and ``data`` (the event's payload). Decisions, retries, losses, actions (with the
    anomaly they answer) and refused commands are all there. ``next_after`` is the ``after`` of
    the next page, None when this one reaches the end. None if the pipeline is unknown."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    async with _connection(db, database_url) as conn:
        known = await conn.fetchval("SELECT 1 FROM pipelines WHERE pipeline_id = $1", pipeline_uuid)
        if known is None:
            return None
        rows = await conn.fetch(
            """
            SELECT seq, at, type, stage, attempt, summary, data FROM pipeline_history
            WHERE pipeline_id = $1 AND seq > $2 ORDER BY seq LIMIT $3
            """,
            pipeline_uuid,
            after if after is not None else 0,
            limit + 1,
        )
    more = len(rows) > limit
    events = [
        {
            "seq": r["seq"],
            "at": r["at"],
            "type": r["type"],
            "stage": r["stage"],
            "attempt": r["attempt"],
            "summary": r["summary"],
            "data": orjson.loads(r["data"]),
        }
        for r in rows[:limit]
    ]
    return {
        "pipeline_uuid": pipeline_uuid,
        "events": events,
        "next_after": events[-1]["seq"] if more else None,
    }


def get_pipeline_history(
    pipeline_uuid: str,
    *,
    after: int | None = None,
    limit: int = 100,
    database_url: str | None = None,
) -> dict[str, Any] | None:
    return run_sync(
        aget_pipeline_history(pipeline_uuid, after=after, limit=limit, database_url=database_url)
    )


async def aget_projected_offsets(
    settings: KafkaSettings, *, db: Db, projection: str = "pipelines"
) -> dict[int, int]:
    """How far the read model has read the event log: the next offset of ``pipeline.events``
    (in ``settings``' namespace) that the projection ``projection`` (the orchestrator's is
    ``pipelines``) will read, by partition; a partition it has not read yet is absent."""
    async with _connection(db) as conn:
        rows = await conn.fetch(
            "SELECT partition, next_offset FROM projection_offsets "
            "WHERE projection = $1 AND topic = $2",
            projection,
            settings.topic(Topic.PIPELINE_EVENTS),
        )
    return {r["partition"]: r["next_offset"] for r in rows}


async def alast_history_seq(pipeline_uuid: str, *, db: Db) -> int:
    """The number of a pipeline's latest history entry (0 if none yet)."""
    seq = await db.fetchval(
        "SELECT max(seq) FROM pipeline_history WHERE pipeline_id = $1", pipeline_uuid
    )
    return int(seq or 0)


def _labels(labels: list[str]) -> dict[str, str]:
    # Agents are labelled ``a100,ib`` or ``zone=eu``: a bare label maps to "".
    out: dict[str, str] = {}
    for label in labels:
        key, _, value = label.partition("=")
        out[key] = value
    return out


def _running_command(command_id: str) -> dict[str, Any]:
    # ``core.ids.command_id`` is pipeline:stage:attempt (a pipeline id may hold ":").
    parts = command_id.rsplit(":", 2)
    if len(parts) == 3 and parts[2].isdigit():
        return {"pipeline_uuid": parts[0], "stage": parts[1], "attempt": int(parts[2])}
    return {"pipeline_uuid": None, "stage": None, "attempt": None}


async def alist_agents(
    *, database_url: str | None = None, db: Db | None = None
) -> list[dict[str, Any]]:
    """Every agent that ever sent a heartbeat, by id: its labels, GPUs (total and free), stage
    slots (None: the agent announces no limit but its GPUs), the stages it runs (pipeline,
    stage, attempt, job), when it was last heard from, and whether it is alive (heard from
    within the orchestrator's silence interval, and not stopping)."""
    async with _connection(db, database_url) as conn:
        rows = await conn.fetch(
            """
            SELECT agent_id, labels, gpus, free_gpus, slots, running, last_heartbeat_at,
                   (NOT stopping AND silent_after > now()) AS alive
            FROM agents ORDER BY agent_id
            """
        )
        running = {r["agent_id"]: orjson.loads(r["running"]) for r in rows}
        commands = sorted({c for ids in running.values() for c in ids})
        known = {
            r["command_id"]: r
            for r in await conn.fetch(
                """
                SELECT command_id, pipeline_id, name, attempt, job_id FROM pipeline_stages
                WHERE command_id = ANY($1::text[])
                """,
                commands,
            )
        }

    def stage(command_id: str) -> dict[str, Any]:
        row = known.get(command_id)
        if row is None:
            return {**_running_command(command_id), "job_uuid": None}
        return {
            "pipeline_uuid": row["pipeline_id"],
            "stage": row["name"],
            "attempt": row["attempt"],
            "job_uuid": row["job_id"],
        }

    return [
        {
            "agent_id": r["agent_id"],
            "labels": _labels(orjson.loads(r["labels"])),
            "gpus": r["gpus"],
            "gpus_free": r["free_gpus"],
            "slots": r["slots"],
            "running": [stage(c) for c in running[r["agent_id"]]],
            "last_heartbeat_at": r["last_heartbeat_at"],
            "alive": r["alive"],
        }
        for r in rows
    ]


def list_agents(*, database_url: str | None = None) -> list[dict[str, Any]]:
    return run_sync(alist_agents(database_url=database_url))


# --- failed attempts (diagnostics' periodic OOM scan) ----------------------------------------


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """One attempt of a stage that failed, as the read model keeps it."""

    pipeline_id: str
    stage: str
    attempt: int
    command_id: str | None
    job_id: str | None
    error: str | None


async def aget_oom_failures(*, db: Db) -> list[FailedAttempt]:
    """Every attempt that failed out of GPU memory: failure kind ``oom``, or, for a stage none
    of whose attempts is so marked, an error that says it ran out of memory (its latest
    attempt). Empty where the read model is not in that database."""
    async with _connection(db) as conn:
        if await conn.fetchval("SELECT to_regclass('pipeline_stages')") is None:
            return []
        rows = await conn.fetch(
            "SELECT pipeline_id, name, attempt, command_id, job_id, error, attempts "
            "FROM pipeline_stages WHERE attempts::text LIKE '%oom%' "
            "OR error ILIKE '%out of memory%'"
        )
    return [failure for row in rows for failure in _oom_attempts(row)]


def _oom_attempts(row: asyncpg.Record) -> list[FailedAttempt]:
    attempts = row["attempts"]
    if isinstance(attempts, str | bytes):  # unless the caller's pool decodes jsonb itself
        attempts = orjson.loads(attempts)
    items = list(attempts.values()) if isinstance(attempts, dict) else list(attempts or [])
    ooms = [
        a for a in items if isinstance(a, dict) and "oom" in (a.get("failure_kind"), a.get("kind"))
    ]
    if not ooms and mentions_oom(str(row["error"] or "")):
        ooms = [{}]
    return [
        FailedAttempt(
            pipeline_id=row["pipeline_id"],
            stage=row["name"],
            attempt=int(a.get("attempt", row["attempt"])),
            command_id=a.get("command_id") or row["command_id"],
            job_id=a.get("job_id") or row["job_id"],
            error=a.get("error") or row["error"],
        )
        for a in ooms
    ]
