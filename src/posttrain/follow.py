"""``posttrain submit FILE --follow``: a pipeline followed live in the terminal.

It reads the read models the way ``status`` does (the orchestrator's pipelines, the metrics
store, the anomalies the recorder keeps) every ``interval_s``, redraws a rich ``Live`` view of
the stages by layer with the latest metrics of running jobs and the anomalies and actions so
far, and prints a line above it for each change (a stage's new status, a new anomaly or
action), so that the scrollback, or output that is not a terminal, is the run's story.
"""

from __future__ import annotations

import asyncio
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from posttrain.render import (
    TERMINAL,
    anomaly_line,
    follow_view,
    metric_fields,
    number,
    one_line,
    styled,
)

STALE_EVERY_S = 5.0  # how often to ask whether an orchestrator is alive
METRICS_EVERY_S = 5.0  # how often a running job's latest point gets a line of its own


async def _latest_points(conn: Any, status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each running (or paused) stage's newest metric point, by stage name."""
    from posttrain.metrics_ingest.queries import get_latest_metrics

    latest: dict[str, dict[str, Any]] = {}
    for stage in status["stages"]:
        if stage["status"] in ("running", "paused") and stage.get("job_id"):
            points = await get_latest_metrics(stage["job_id"], 1, db=conn)
            if points:
                latest[stage["name"]] = points[0].point.model_dump(exclude_none=True)
    return latest


async def _anomalies(conn: Any, pipeline_id: str) -> list[dict[str, Any]]:
    try:
        from posttrain.diagnostics.queries import aget_anomalies
    except ImportError:  # diagnostics not installed here: nothing to show
        return []
    import asyncpg

    try:
        return [a.to_dict() for a in await aget_anomalies(pipeline_id=pipeline_id, db=conn)]
    except asyncpg.UndefinedTableError:  # the recorder's tables are not migrated here
        return []


def _changes(before: dict[str, Any] | None, after: dict[str, Any]) -> list[Text]:
    """A line per stage whose status or attempt changed, and for the pipeline's status."""
    lines = []
    old = {s["name"]: s for s in (before or {}).get("stages", [])}
    for stage in after["stages"]:
        was = old.get(stage["name"])
        if was is not None and (was["status"], was["attempt"]) == (
            stage["status"],
            stage["attempt"],
        ):
            continue
        line = Text(f"{stage['name']}: ")
        line.append_text(styled(stage["status"]))
        line.append(f" (attempt {stage['attempt']}")
        if stage.get("agent_id"):
            line.append(f", on {stage['agent_id']}")
        line.append(")")
        note = stage.get("error") or stage.get("waiting_reason")
        if note:
            line.append(f": {one_line(note)}")
        lines.append(line)
    if before is None or before["status"] != after["status"]:
        line = Text("pipeline: ")
        line.append_text(styled(after["status"]))
        lines.append(line)
    return lines


def metrics_line(stage: str, point: dict[str, Any]) -> Text:
    """A running job's latest point as one line: ``sft step 120: loss 0.25, ...``."""
    shown = ", ".join(f"{f} {number(point.get(f))}" for f in metric_fields([point]))
    return Text(f"{stage} step {point.get('step')}: {shown}", style="dim")


def _action_keys(anomaly: dict[str, Any]) -> set[tuple[str, str]]:
    return {(a["action_id"], a["status"]) for a in anomaly.get("actions") or []}


async def follow_pipeline(
    pipeline_id: str,
    database_url: str,
    kafka: Any,
    console: Console,
    *,
    interval_s: float = 0.5,
) -> str:
    """Follow a pipeline until it ends; its final status."""
    import asyncpg

    from posttrain.liveness import read_model_staleness
    from posttrain.orchestrator.client import aget_pipeline_status

    conn = await asyncpg.connect(database_url, timeout=5)
    status: dict[str, Any] | None = None
    seen: dict[str, set[tuple[str, str]]] = {}
    stale: str | None = None
    loop = asyncio.get_running_loop()
    stale_at = 0.0
    said_metrics: dict[str, tuple[float, Any]] = {}  # stage -> (when, step) last printed
    try:
        with Live(
            follow_view(None, pipeline_id=pipeline_id),
            console=console,
            refresh_per_second=4,
            transient=False,
        ) as live:
            while True:
                found = await aget_pipeline_status(pipeline_id, db=conn)
                if loop.time() >= stale_at:
                    terminal = found is not None and found["status"] in TERMINAL
                    was, stale = stale, await read_model_staleness(conn, kafka, terminal=terminal)
                    stale_at = loop.time() + STALE_EVERY_S
                    if stale and stale != was:
                        live.console.print(Text(f"stale: {stale}", style="bold yellow"))
                if found is not None:
                    for line in _changes(status, found):
                        live.console.print(line)
                    status = found
                anomalies = await _anomalies(conn, pipeline_id)
                for anomaly in anomalies:
                    keys = _action_keys(anomaly)
                    new = keys - seen.get(anomaly["anomaly_id"], set())
                    if anomaly["anomaly_id"] not in seen or new:
                        live.console.print(Text("anomaly: ").append_text(anomaly_line(anomaly)))
                    seen[anomaly["anomaly_id"]] = keys
                latest = await _latest_points(conn, status) if status else {}
                now = loop.time()
                for stage, point in latest.items():
                    when, step = said_metrics.get(stage, (-METRICS_EVERY_S, None))
                    if point.get("step") != step and now - when >= METRICS_EVERY_S:
                        live.console.print(metrics_line(stage, point))
                        said_metrics[stage] = (now, point.get("step"))
                live.update(
                    follow_view(
                        status,
                        pipeline_id=pipeline_id,
                        latest=latest,
                        anomalies=anomalies,
                        stale=stale if status is None or status["status"] not in TERMINAL else None,
                    )
                )
                if status is not None and status["status"] in TERMINAL:
                    break
                await asyncio.sleep(interval_s)
        if not console.is_terminal:
            console.line()  # the last frame is printed without one where nothing redraws it
        return str(status["status"])
    finally:
        await conn.close()
