"""Writing anomaly and action records to diagnostics' own tables (migrations/0001_anomalies.sql).

Every write can be repeated without effect, which is what lets the recorder commit its offsets
after the rows and simply write again whatever it reads twice:

- an anomaly is inserted once (``ON CONFLICT (anomaly_id) DO NOTHING``): the first record of an
  id is the one kept;
- an action's record only fills columns that are still empty (``COALESCE`` of the stored value
  first), so an event read again writes what is already there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from posttrain.diagnostics.core.records import ActionRecord, AnomalyRecord
from posttrain.service import notify

# An asyncpg connection (asyncpg ships no type hints).
Connection = Any

_INSERT_ANOMALY = """
INSERT INTO anomalies (
    anomaly_id, job_id, pipeline_id, stage, attempt, anomaly_type, severity, step, value,
    message, suggestions, window_stats, emitted_at, detected_at, event_id
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12::jsonb, $13, $14, $15)
ON CONFLICT (anomaly_id) DO NOTHING
RETURNING 1
"""

_ACTION_COLUMNS = (
    "action_id",
    "action",
    "anomaly_id",
    "pipeline_id",
    "stage",
    "attempt",
    "factor",
    "reason",
    "recommended_at",
    "requested_at",
    "applied_at",
    "applied_step",
    "applied_details",
    "refused_at",
    "refusal",
)
_ACTION_VALUES = ", ".join(
    f"${i}::jsonb" if column == "applied_details" else f"${i}"
    for i, column in enumerate(_ACTION_COLUMNS, 1)
)
_ACTION_FILL = ", ".join(f"{c} = COALESCE(a.{c}, EXCLUDED.{c})" for c in _ACTION_COLUMNS[1:])
_UPSERT_ACTION = (
    f"INSERT INTO anomaly_actions AS a ({', '.join(_ACTION_COLUMNS)}) VALUES ({_ACTION_VALUES}) "
    f"ON CONFLICT (action_id) DO UPDATE SET {_ACTION_FILL}"
)


@dataclass(frozen=True, slots=True)
class WriteResult:
    anomalies_inserted: int
    anomalies_known: int  # offered again: already stored, left as they were
    actions: int


def _json(value: Any) -> str:
    # Non-finite window statistics never reach here (make() drops them), but a hand-written
    # event might carry one: JSON has no NaN, so it is stored as its name.
    return orjson.dumps(value, default=str).decode()


def _window(window: Any) -> dict[str, Any]:
    return {k: (v if math.isfinite(v) else str(v)) for k, v in dict(window).items()}


async def write_records(
    conn: Connection, anomalies: Sequence[AnomalyRecord], actions: Sequence[ActionRecord]
) -> WriteResult:
    """Write the records in one transaction, in order."""
    inserted = 0
    stored: list[str] = []
    async with conn.transaction():
        for a in anomalies:
            row = await conn.fetchval(
                _INSERT_ANOMALY,
                a.anomaly_id,
                a.job_id,
                a.pipeline_id,
                a.stage,
                a.attempt,
                a.anomaly_type,
                a.severity,
                a.step,
                a.value,
                a.message,
                _json(list(a.suggestions)),
                _json(_window(a.window)),
                a.emitted_at,
                a.detected_at,
                a.event_id,
            )
            if row is not None:
                inserted += 1
                stored.append(anomaly_notification(a))
        for x in actions:
            await conn.execute(
                _UPSERT_ACTION,
                x.action_id,
                x.action,
                x.anomaly_id,
                x.pipeline_id,
                x.stage,
                x.attempt,
                x.factor,
                x.reason,
                x.recommended_at,
                x.requested_at,
                x.applied_at,
                x.applied_step,
                None if x.applied_details is None else _json(x.applied_details),
                x.refused_at,
                x.refusal,
            )
        if stored:
            # Delivered on commit: live views hear of each anomaly once, when it is kept.
            await conn.execute(notify.NOTIFY_EACH, notify.ANOMALIES, stored)
    return WriteResult(inserted, len(anomalies) - inserted, len(actions))


def anomaly_notification(a: AnomalyRecord) -> str:
    """The ``notify.ANOMALIES`` payload of a stored anomaly."""
    return orjson.dumps(
        {
            "anomaly_id": a.anomaly_id,
            "job_id": a.job_id,
            "pipeline_id": a.pipeline_id,
            "stage": a.stage,
            "step": a.step,
            "anomaly_type": a.anomaly_type,
            "severity": a.severity,
        }
    ).decode()
