"""The seed's Python API over the event-sourced orchestrator.

``PipelineExecutor(pipeline_uuid).execute(stages)`` validates the DAG here (the same validator
the orchestrator runs), submits it as a ``SubmitPipeline`` command and returns the id and the
execution layers; ``.resume()``, ``.cancel()`` and ``.retry_stage()`` send the matching
commands (and raise ``UnknownPipeline`` for a pipeline the read model does not know).
``get_pipeline_status(uuid)`` reads the read model in PostgreSQL.
Each call has an ``a``-prefixed coroutine twin for code already inside an event loop.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg
import orjson

from posttrain.events import Envelope, Message
from posttrain.events.kafka import EventProducer, KafkaSettings
from posttrain.events.messages import (
    CancelPipeline,
    ResumePipeline,
    RetryStage,
    StageSpec,
    SubmitPipeline,
)
from posttrain.events.topics import Topic
from posttrain.orchestrator.core.dag import DagResolver

DEFAULT_DATABASE_URL = "postgresql://posttrain:posttrain@127.0.0.1:5432/posttrain"


def _database_url(url: str | None) -> str:
    return url or os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)


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
        return {"pipeline_uuid": self.pipeline_uuid, "layers": layers}

    def execute(
        self,
        stages: Iterable[Mapping[str, Any] | StageSpec],
        *,
        name: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        return asyncio.run(self.aexecute(stages, name=name, settings=settings))

    async def aresume(self) -> None:
        await self._require_known()
        await self._send(
            ResumePipeline(pipeline_id=self.pipeline_uuid, requested_by=self.submitted_by)
        )

    def resume(self) -> None:
        """Run again every failed, cancelled or lost stage (and what waits on them)."""
        asyncio.run(self.aresume())

    async def acancel(self, reason: str = "") -> None:
        await self._require_known()
        await self._send(
            CancelPipeline(
                pipeline_id=self.pipeline_uuid, reason=reason, requested_by=self.submitted_by
            )
        )

    def cancel(self, reason: str = "") -> None:
        asyncio.run(self.acancel(reason))

    async def aretry_stage(self, stage: str) -> None:
        await self._require_known()
        await self._send(
            RetryStage(pipeline_id=self.pipeline_uuid, stage=stage, requested_by=self.submitted_by)
        )

    def retry_stage(self, stage: str) -> None:
        asyncio.run(self.aretry_stage(stage))


# An asyncpg connection, or a pool (the gateway's) to take one from; asyncpg is untyped.
Db = Any


async def aget_pipeline_status(
    pipeline_uuid: str, database_url: str | None = None, *, db: Db | None = None
) -> dict[str, Any] | None:
    """Status and, per stage, name, status, command id, agent, attempts, times; None if the
    pipeline is unknown (or not projected yet). Reads through ``db`` when given."""
    conn = db if db is not None else await asyncpg.connect(_database_url(database_url))
    try:
        row = await conn.fetchrow("SELECT * FROM pipelines WHERE pipeline_id = $1", pipeline_uuid)
        if row is None:
            return None
        stages = await conn.fetch(
            "SELECT * FROM pipeline_stages WHERE pipeline_id = $1 ORDER BY position",
            pipeline_uuid,
        )
    finally:
        if db is None:
            await conn.close()
    return {
        **_summary(row),
        "layers": orjson.loads(row["layers"]),
        "errors": orjson.loads(row["errors"]),
        "stages": [
            {
                "name": s["name"],
                "task": s["task"],
                "depends_on": orjson.loads(s["depends_on"]),
                "status": s["status"],
                "task_id": s["command_id"],
                "attempt": s["attempt"],
                "agent_id": s["agent_id"],
                "job_id": s["job_id"],
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
    return asyncio.run(aget_pipeline_status(pipeline_uuid, database_url))
