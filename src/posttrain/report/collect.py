"""A finished (or running) pipeline's report, read through the services' own query APIs: the
orchestrator's read-model client for stages and outputs, the metrics ingest's queries for each
job's points, the diagnostics recorder's queries for anomalies and the actions on them. Nothing
here reads another service's tables itself."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import PurePath
from typing import Any

from posttrain.report.model import CHART_FIELDS, EvaluationRow, Marker, RunReport, StageRun


async def collect_report(
    pipeline_id: str,
    database_url: str,
    *,
    baseline: str | None = None,
    web_url: str | None = None,
) -> RunReport:
    """The report of ``pipeline_id`` as recorded in ``database_url``; ``baseline``: the stage
    whose evaluated model the others are compared with (e.g. the SFT stage)."""
    import asyncpg

    from posttrain.diagnostics.queries import aget_anomalies
    from posttrain.metrics_ingest.queries import get_job_points
    from posttrain.orchestrator.client import aget_pipeline_status

    conn = await asyncpg.connect(database_url)
    try:
        status = await aget_pipeline_status(pipeline_id, db=conn)
        if status is None:
            raise LookupError(f"pipeline {pipeline_id!r} is not in {database_url}'s read model")
        anomalies = await aget_anomalies(pipeline_id=pipeline_id, db=conn)
        stages = []
        for stage in status["stages"]:
            job_id = stage["job_id"]
            points = await get_job_points(job_id, db=conn) if job_id else []
            series = chart_series([p.point.model_dump() for p in points])
            markers = stage_markers([a.to_dict() for a in anomalies if a.stage == stage["name"]])
            stages.append(_stage(stage, series, markers))
    finally:
        await conn.close()
    return RunReport(
        pipeline_id=pipeline_id,
        name=status["name"] or pipeline_id,
        status=status["status"],
        stages=stages,
        evaluation=evaluation_rows(status["stages"]),
        baseline=baseline,
        web_url=web_url,
    )


def chart_series(points: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Each charted field's finite values by step (points as ``MetricPoint.model_dump()``)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for name, _ in CHART_FIELDS:
        values = [
            (int(p["step"]), float(p[name]))
            for p in points
            if isinstance(p.get(name), int | float) and math.isfinite(p[name])
        ]
        if values:
            series[name] = sorted(values)
    return series


def stage_markers(anomalies: Sequence[Mapping[str, Any]]) -> list[Marker]:
    """An anomaly marker per anomaly (``RecordedAnomaly.to_dict()``) and an action marker per
    action on it, at the step it was applied (else the anomaly's step)."""
    markers = []
    for anomaly in anomalies:
        markers.append(
            Marker(
                int(anomaly["step"]),
                "anomaly",
                f"{anomaly['anomaly_type']} ({anomaly['severity']}): {anomaly['message']}",
            )
        )
        for action in anomaly.get("actions", ()):
            step = action.get("applied_step")
            markers.append(
                Marker(
                    int(step if step is not None else anomaly["step"]),
                    "action",
                    f"{action['action']} {action['status']}",
                )
            )
    return sorted(markers, key=lambda m: (m.step, m.kind))


def evaluation_rows(stages: Sequence[Mapping[str, Any]]) -> list[EvaluationRow]:
    """The rows of every evaluation stage's ``results``, each model named by the stage whose
    checkpoint it is (its path's job directory when no stage's checkpoint matches)."""
    by_checkpoint = {
        str(s["outputs"]["checkpoint"]): s["name"]
        for s in stages
        if isinstance(s.get("outputs"), Mapping) and s["outputs"].get("checkpoint")
    }
    rows = []
    for stage in stages:
        outputs = stage.get("outputs") or {}
        for result in outputs.get("results", ()) if isinstance(outputs, Mapping) else ():
            model = str(result.get("model", ""))
            name = by_checkpoint.get(model) or PurePath(model).parent.name
            rows.append(
                EvaluationRow(
                    stage=name,
                    model=model,
                    accuracy=_float(result.get("eval_accuracy")),
                    reward=_float(result.get("reward_mean")),
                    loss=_float(result.get("eval_loss")),
                )
            )
    return rows


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _stage(
    stage: Mapping[str, Any], series: dict[str, list[tuple[int, float]]], markers: list[Marker]
) -> StageRun:
    started, finished = stage.get("started_at"), stage.get("finished_at")
    seconds = (
        (finished - started).total_seconds()
        if isinstance(started, datetime) and isinstance(finished, datetime)
        else None
    )
    return StageRun(
        name=stage["name"],
        task=stage["task"],
        status=stage["status"],
        attempt=int(stage.get("attempt") or 1),
        agent_id=stage.get("agent_id"),
        job_id=stage.get("job_id"),
        seconds=seconds,
        series=series,
        markers=markers,
    )
