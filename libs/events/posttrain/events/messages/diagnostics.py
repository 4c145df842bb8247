"""Anomalies found by diagnostics (posttrain.anomalies) and alert outcomes (posttrain.alerts)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from posttrain.events.messages.base import Message

Severity = Literal["info", "warning", "critical"]


class AnomalyDetected(Message):
    TYPE = "AnomalyDetected"

    anomaly_id: str
    job_id: str
    anomaly_type: str
    severity: Severity
    step: int
    value: float | None
    message: str
    suggestions: list[str] = Field(default_factory=list)
    window: dict[str, float] = Field(default_factory=dict)
    pipeline_id: str | None = None
    stage: str | None = None
    attempt: int | None = None
    emitted_at: float | None = None  # when the triggering point was measured by the trainer


class AlertSent(Message):
    TYPE = "AlertSent"

    anomaly_id: str
    job_id: str
    channel: str
    attempts: int


class AlertFailed(Message):
    TYPE = "AlertFailed"

    anomaly_id: str
    job_id: str
    channel: str
    attempts: int
    error: str


class ActionRecommended(Message):
    """Dry-run mode: what the policy would have done."""

    TYPE = "ActionRecommended"

    anomaly_id: str
    job_id: str
    action: str
    reason: str
    factor: float | None = None
