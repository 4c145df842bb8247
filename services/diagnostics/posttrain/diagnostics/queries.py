"""Reading kept anomalies back, with the actions taken on each: what ``diagnose_job``, the
gateway and the web page use.

    get_anomalies(job_id="job-123")            # a job's anomalies, by step
    get_anomalies(pipeline_id="pipeline-001")  # every job of a pipeline
    await aget_anomalies(job_id=..., db=pool)  # the coroutine twin, on a pool or connection

Without ``db``, a connection to ``database_url`` (or ``DATABASE_URL``) is opened for the call.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from posttrain.events.nonfinite import non_finite_text
from posttrain.service.settings import database_url as _database_url

# An asyncpg Pool or Connection (asyncpg ships no type hints).
Db = Any


@dataclass(frozen=True, slots=True)
class RecordedAction:
    """An action on an anomaly. ``status``: recommended (dry run, or no stage to act on),
    requested (sent to the stage), applied (the agent reported it done), or refused (with
    ``refusal``, the reason)."""

    action_id: str
    action: str
    status: str
    pipeline_id: str | None
    stage: str | None
    attempt: int | None
    factor: float | None
    reason: str | None
    recommended_at: datetime | None
    requested_at: datetime | None
    applied_at: datetime | None
    applied_step: int | None
    applied_details: dict[str, Any] | None
    refused_at: datetime | None
    refusal: str | None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class RecordedAnomaly:
    """An anomaly as it was raised on posttrain.anomalies, and the actions taken on it."""

    anomaly_id: str
    job_id: str
    pipeline_id: str | None
    stage: str | None
    attempt: int | None
    anomaly_type: str
    severity: str
    step: int
    value: float | None
    message: str
    suggestions: list[str]
    window: dict[str, Any]
    emitted_at: datetime | None
    detected_at: datetime
    actions: list[RecordedAction] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready but for times: a non-finite value is written as the string "NaN",
        "Infinity" or "-Infinity", as the events write it (JSON has no such numbers)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "actions"}
        value = self.value
        if value is not None and not math.isfinite(value):
            out["value"] = non_finite_text(value)
        out["actions"] = [a.to_dict() for a in self.actions]
        return out


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


async def aget_anomalies(
    job_id: str | None = None,
    pipeline_id: str | None = None,
    *,
    stage: str | None = None,
    limit: int | None = None,
    database_url: str | None = None,
    db: Db | None = None,
) -> list[RecordedAnomaly]:
    """The kept anomalies of a job or of a pipeline (optionally of one of its stages), in step
    order, each with its actions in the order they were recorded. At least one of ``job_id``
    and ``pipeline_id`` is required."""
    if job_id is None and pipeline_id is None:
        raise ValueError("name a job_id or a pipeline_id")
    conn = db if db is not None else await asyncpg.connect(_database_url(database_url))
    try:
        rows = await conn.fetch(
            """
            SELECT * FROM anomalies
            WHERE ($1::text IS NULL OR job_id = $1)
              AND ($2::text IS NULL OR pipeline_id = $2)
              AND ($3::text IS NULL OR stage = $3)
            ORDER BY step, detected_at, anomaly_id
            LIMIT $4
            """,
            job_id,
            pipeline_id,
            stage,
            limit,
        )
        ids = [r["anomaly_id"] for r in rows]
        actions = (
            await conn.fetch(
                """
                SELECT * FROM anomaly_actions WHERE anomaly_id = ANY($1::text[])
                ORDER BY recorded_at, action_id
                """,
                ids,
            )
            if ids
            else []
        )
    finally:
        if db is None:
            await conn.close()
    by_anomaly: dict[str, list[RecordedAction]] = {}
    for x in actions:
        by_anomaly.setdefault(x["anomaly_id"], []).append(
            RecordedAction(
                action_id=x["action_id"],
                action=x["action"],
                status=x["status"],
                pipeline_id=x["pipeline_id"],
                stage=x["stage"],
                attempt=x["attempt"],
                factor=x["factor"],
                reason=x["reason"],
                recommended_at=x["recommended_at"],
                requested_at=x["requested_at"],
                applied_at=x["applied_at"],
                applied_step=x["applied_step"],
                applied_details=_json(x["applied_details"]),
                refused_at=x["refused_at"],
                refusal=x["refusal"],
            )
        )
    return [
        RecordedAnomaly(
            anomaly_id=r["anomaly_id"],
            job_id=r["job_id"],
            pipeline_id=r["pipeline_id"],
            stage=r["stage"],
            attempt=r["attempt"],
            anomaly_type=r["anomaly_type"],
            severity=r["severity"],
            step=r["step"],
            value=r["value"],
            message=r["message"],
            suggestions=list(_json(r["suggestions"])),
            window=dict(_json(r["window_stats"])),
            emitted_at=r["emitted_at"],
            detected_at=r["detected_at"],
            actions=by_anomaly.get(r["anomaly_id"], []),
        )
        for r in rows
    ]


def get_anomalies(
    job_id: str | None = None,
    pipeline_id: str | None = None,
    *,
    stage: str | None = None,
    limit: int | None = None,
    database_url: str | None = None,
) -> list[RecordedAnomaly]:
    """``aget_anomalies`` as a plain call (outside an event loop)."""
    return asyncio.run(
        aget_anomalies(job_id, pipeline_id, stage=stage, limit=limit, database_url=database_url)
    )
