"""What diagnostics keeps of anomalies and the actions taken on them: one record per anomaly id and
one per action id, made from the events that tell of them. Pure: the recorder writes these, the
queries read them back.

Actions are told of by several events, each filling part of the action's record:

- ``ActionRecommended`` (posttrain.anomalies): dry run, or no stage to act on. It has no action
  id of its own; it gets the one a request for the same anomaly and action would have had.
- ``ActionRequested`` (pipeline event log): the orchestrator accepted the request.
- ``ActionApplied`` (a stage report the orchestrator recorded on the log): the agent did it.
- ``ActionRefused`` (pipeline event log): the request could not be carried out, with the reason.

Events on the log are read by type name and their fields by name (``action_record``), so a type
this reader's library does not know yet is recorded all the same.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter

from posttrain.diagnostics.core.ids import action_id
from posttrain.events.messages.diagnostics import ActionRecommended, AnomalyDetected

JsonDict = dict[str, Any]

ACTION_REQUESTED = "ActionRequested"
ACTION_APPLIED = "ActionApplied"
ACTION_REFUSED = "ActionRefused"
# The pipeline event log's types that tell of actions; every other type there is not ours.
ACTION_EVENTS = frozenset({ACTION_REQUESTED, ACTION_APPLIED, ACTION_REFUSED})


class InvalidRecord(ValueError):
    """An action event whose fields cannot make a record (``reason``: why, for the DLQ)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.reason = "invalid"
        self.detail = detail


@dataclass(frozen=True, slots=True)
class AnomalyRecord:
    """An anomaly as raised (AnomalyDetected), with the event's id and time."""

    anomaly_id: str
    job_id: str
    anomaly_type: str
    severity: str
    step: int
    value: float | None
    message: str
    detected_at: datetime
    event_id: str
    pipeline_id: str | None = None
    stage: str | None = None
    attempt: int | None = None
    suggestions: tuple[str, ...] = ()
    window: Mapping[str, float] = field(default_factory=dict)
    emitted_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """What one event says of an action; the fields it does not speak of are None."""

    action_id: str
    action: str
    anomaly_id: str | None = None
    pipeline_id: str | None = None
    stage: str | None = None
    attempt: int | None = None
    factor: float | None = None
    reason: str | None = None
    recommended_at: datetime | None = None
    requested_at: datetime | None = None
    applied_at: datetime | None = None
    applied_step: int | None = None
    applied_details: JsonDict | None = None
    refused_at: datetime | None = None
    refusal: str | None = None


# Records made from the event's fields by name (pydantic copies the list and the dict).
_ANOMALY_RECORD = TypeAdapter(AnomalyRecord)


def anomaly_record(
    event: AnomalyDetected, *, event_id: str, occurred_at: datetime
) -> AnomalyRecord:
    """The record of an AnomalyDetected: its fields, the envelope's id and time, and the time the
    point was measured as a datetime (None when unknown)."""
    emitted = event.emitted_at
    return _ANOMALY_RECORD.validate_python(
        {
            **event.model_dump(),
            "detected_at": occurred_at,
            "event_id": event_id,
            "emitted_at": (
                datetime.fromtimestamp(emitted, UTC)
                if emitted is not None and math.isfinite(emitted)
                else None
            ),
        }
    )


def recommended_action(event: ActionRecommended, *, occurred_at: datetime) -> ActionRecord:
    return ActionRecord(
        action_id=action_id(event.anomaly_id, event.action),
        action=event.action,
        anomaly_id=event.anomaly_id,
        factor=event.factor,
        reason=event.reason,
        recommended_at=occurred_at,
    )


def action_record(
    type_name: str, data: Mapping[str, Any], *, occurred_at: datetime
) -> ActionRecord:
    """The record an action event of the pipeline log makes, from its fields by name."""
    if type_name not in ACTION_EVENTS:
        raise ValueError(f"{type_name} is not an action event")
    fields = _Fields(type_name, data)
    record = ActionRecord(
        action_id=fields.required_text("action_id"),
        action=fields.required_text("action"),
        anomaly_id=fields.text("anomaly_id"),
        pipeline_id=fields.text("pipeline_id"),
        stage=fields.text("stage"),
        attempt=fields.integer("attempt"),
    )
    if type_name == ACTION_REQUESTED:
        return replace(
            record,
            factor=fields.number("factor"),
            reason=fields.text("reason"),
            requested_at=occurred_at,
        )
    if type_name == ACTION_APPLIED:
        return replace(
            record,
            applied_at=occurred_at,
            applied_step=fields.integer("step"),
            applied_details=fields.mapping("details"),
        )
    return replace(record, refused_at=occurred_at, refusal=fields.text("reason") or "")


class _Fields:
    """Typed reads of an event's fields, refusing a wrong type with the field's name."""

    def __init__(self, type_name: str, data: Mapping[str, Any]) -> None:
        self.type_name = type_name
        self.data = data

    def _bad(self, name: str, expected: str) -> InvalidRecord:
        return InvalidRecord(
            f"{self.type_name}.{name}: expected {expected}, got {self.data.get(name)!r}"[:500]
        )

    def required_text(self, name: str) -> str:
        value = self.data.get(name)
        if not isinstance(value, str) or not value:
            raise self._bad(name, "a non-empty string")
        return value

    def text(self, name: str) -> str | None:
        value = self.data.get(name)
        if value is not None and not isinstance(value, str):
            raise self._bad(name, "a string")
        return value

    def integer(self, name: str) -> int | None:
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(name, "an integer")
        return value

    def number(self, name: str) -> float | None:
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._bad(name, "a number")
        return float(value)

    def mapping(self, name: str) -> JsonDict | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._bad(name, "an object")
        return dict(value)
