"""Anomalies as events: the AnomalyDetected a rule's Anomaly becomes on posttrain.anomalies."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import TypeAdapter

from posttrain.diagnostics.core.alerting import Alert
from posttrain.diagnostics.core.anomaly import Anomaly
from posttrain.diagnostics.core.ids import oom_anomaly_id
from posttrain.diagnostics.core.state import JobState
from posttrain.events.messages.diagnostics import AnomalyDetected

# (source, seq, point): a point with the identity that makes a redelivery harmless.
SourcedPoint = tuple[str | None, int | None, Any]


def detect(
    state: JobState,
    job_id: str,
    points: Iterable[SourcedPoint],
    *,
    pipeline_id: str | None = None,
    stage: str | None = None,
    attempt: int | None = None,
) -> Iterator[AnomalyDetected]:
    """Fold a job's points into its state, in order, and yield the AnomalyDetected each raises,
    stamped with the point's time: what the stream emits and what a backtest replays. A point
    is a MetricPoint or its view (the rules only read fields)."""
    for source, seq, point in points:
        for anomaly in state.observe(point, source=source, seq=seq):
            yield anomaly_detected(
                job_id,
                anomaly,
                pipeline_id=pipeline_id,
                stage=stage,
                attempt=attempt,
                emitted_at=point.timestamp,
            )


def anomaly_detected(
    job_id: str,
    anomaly: Anomaly,
    *,
    pipeline_id: str | None = None,
    stage: str | None = None,
    attempt: int | None = None,
    emitted_at: float | None = None,
) -> AnomalyDetected:
    return AnomalyDetected(
        anomaly_id=anomaly.id_for(job_id),
        job_id=job_id,
        anomaly_type=anomaly.anomaly_type.value,
        severity=anomaly.severity,
        step=anomaly.step,
        value=anomaly.value,
        message=anomaly.message,
        suggestions=list(anomaly.suggestions),
        window=dict(anomaly.window),
        pipeline_id=pipeline_id,
        stage=stage,
        attempt=attempt,
        emitted_at=emitted_at,
    )


def oom_detected(
    job_id: str,
    command_id: str,
    anomaly: Anomaly,
    *,
    pipeline_id: str | None,
    stage: str | None,
    attempt: int | None,
    emitted_at: float | None = None,
) -> AnomalyDetected:
    """The AnomalyDetected for an attempt (``command_id``) that ran out of GPU memory, with the
    one id the stream and the periodic scan both give that failure."""
    event = anomaly_detected(
        job_id,
        anomaly,
        pipeline_id=pipeline_id,
        stage=stage,
        attempt=attempt,
        emitted_at=emitted_at,
    )
    return event.model_copy(update={"anomaly_id": oom_anomaly_id(job_id, command_id)})


# An alert says what the event says, field by field (by name; the others are not its business).
_ALERT = TypeAdapter(Alert)


def alert_for(event: AnomalyDetected) -> Alert:
    """The alert of an AnomalyDetected."""
    return _ALERT.validate_python(event.model_dump())
