"""What the ``posttrain`` command line prints, as rich renderables built from plain documents
(the read model's status, a pipeline list, history entries, agents, metric points, anomalies).

No I/O here: the commands fetch, these functions draw, and the tests capture them to a string.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

STATUS_STYLE = {
    "succeeded": "green",
    "running": "cyan",
    "assigned": "cyan",
    "retry_wait": "yellow",
    "paused": "yellow",
    "waiting": "yellow",
    "pending": "dim",
    "failed": "bold red",
    "lost": "red",
    "cancelled": "magenta",
    "rejected": "bold red",
}
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "rejected"})
# Metrics shown for a running job in the live view and in `metrics` when no fields are asked.
HEADLINE_FIELDS = ("loss", "reward_mean", "learning_rate", "grad_norm", "kl_divergence")
SPARK = "▁▂▃▄▅▆▇█"


def _row(table: Table, *cells: RenderableType) -> None:
    """A row whose strings are shown as they are: a stage's error or a task id such as
    ``p:a:1`` is neither rich markup nor an emoji code."""
    table.add_row(*(Text(c) if isinstance(c, str) else c for c in cells))


def one_line(text: str | None) -> str:
    """An error as one line: a traceback's last line says what went wrong (``--verbose``
    prints the whole)."""
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    if not lines:
        return ""
    if lines[0].startswith("Traceback") or len(lines) > 1:
        return f"{lines[-1]} (more with --verbose)"
    return lines[0]


def styled(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")
    return str(value) if value else "-"


def number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


# --- a pipeline ----------------------------------------------------------------------------


def status_header(status: Mapping[str, Any], stale: str | None = None) -> Text:
    head = Text(f"pipeline {status['pipeline_uuid']} ({status['name']}): ")
    head.append_text(styled(status["status"]))
    if stale:
        head.append(f"  [stale: {stale}]", style="bold yellow")
    return head


def plain_table(*columns: str, **options: Any) -> Table:
    """A table without borders whose ``columns`` each take ``options`` (``overflow``,
    ``justify``...)."""
    table = Table(box=None, pad_edge=False, show_edge=False)
    for column in columns:
        table.add_column(column, **options)
    return table


def status_table(status: Mapping[str, Any], *, verbose: bool = False) -> Table:
    """One row per stage, grouped by layer: status, attempt, task id, agent, and what it waits
    for or its error as one line (in full with ``verbose``)."""
    table = plain_table(
        "layer", "stage", "status", "attempt", "task id", "agent", "note", overflow="fold"
    )
    layer_of = {name: i for i, layer in enumerate(status.get("layers") or []) for name in layer}
    stages = sorted(status["stages"], key=lambda s: layer_of.get(s["name"], 1 << 30))
    for stage in stages:
        note = stage.get("waiting_reason") or stage.get("error") or ""
        shown = note.strip() if verbose else one_line(note)
        if stage.get("cached_from"):
            shown = shown or f"cached from {stage['cached_from']}"
        layer = layer_of.get(stage["name"])
        _row(
            table,
            "-" if layer is None else str(layer),
            stage["name"],
            styled(stage["status"]),
            str(stage["attempt"]),
            stage.get("task_id") or "-",
            stage.get("agent_id") or "-",
            shown,
        )
    return table


def status_view(
    status: Mapping[str, Any], *, verbose: bool = False, stale: str | None = None
) -> RenderableType:
    """A pipeline's status: its header line, its validation errors, then its stages."""
    parts: list[RenderableType] = [status_header(status, stale)]
    for error in status.get("errors") or []:
        parts.append(
            Text(
                f"  error: stage {error.get('stage')!r} field {error.get('field')!r}: "
                f"{error.get('message')}",
                style="red",
            )
        )
    parts.append(status_table(status, verbose=verbose))
    return Group(*parts)


def pipelines_table(pipelines: Iterable[Mapping[str, Any]]) -> Table:
    table = plain_table(
        "pipeline", "name", "status", "submitted by", "submitted", "finished", overflow="fold"
    )
    for p in pipelines:
        _row(
            table,
            p["pipeline_uuid"],
            p.get("name") or "-",
            styled(p["status"]),
            p.get("submitted_by") or "-",
            when(p.get("submitted_at")),
            when(p.get("finished_at")),
        )
    return table


def history_table(events: Iterable[Mapping[str, Any]]) -> Table:
    """A pipeline's history (``aget_pipeline_history``'s events): when, what, which stage, and
    its one-line summary."""
    table = plain_table("#", "at", "event", "stage", "attempt", "summary", overflow="fold")
    for e in events:
        _row(
            table,
            str(e.get("seq", "")),
            when(e.get("at")),
            e.get("type", ""),
            e.get("stage") or "-",
            "-" if e.get("attempt") is None else str(e["attempt"]),
            e.get("summary", ""),
        )
    return table


def agents_table(agents: Iterable[Mapping[str, Any]]) -> Table:
    table = plain_table(
        "agent",
        "alive",
        "gpus free",
        "slots",
        "running",
        "labels",
        "last heartbeat",
        overflow="fold",
    )
    for a in agents:
        running = ", ".join(
            f"{r.get('pipeline_uuid')}:{r.get('stage')}#{r.get('attempt')}"
            for r in a.get("running") or []
        )
        labels = ", ".join(f"{k}={v}" for k, v in (a.get("labels") or {}).items())
        _row(
            table,
            a["agent_id"],
            Text("yes", style="green") if a.get("alive") else Text("no", style="red"),
            f"{a.get('gpus_free', '-')}/{a.get('gpus', '-')}",
            "-" if a.get("slots") is None else str(a["slots"]),
            running or "-",
            labels or "-",
            when(a.get("last_heartbeat_at")),
        )
    return table


# --- metrics and anomalies -------------------------------------------------------------------


def metric_fields(points: Sequence[Mapping[str, Any]], wanted: Sequence[str] = ()) -> list[str]:
    """The fields to show: those asked for, else the headline fields the points have, else
    whatever numeric fields they have."""
    if wanted:
        return list(wanted)
    present = {k for p in points for k, v in p.items() if v is not None}
    chosen = [f for f in HEADLINE_FIELDS if f in present]
    if chosen:
        return chosen
    skip = {"step", "timestamp", "epoch", "seq", "source", "custom"}
    return sorted(k for k in present if k not in skip)[:6]


def metrics_table(points: Sequence[Mapping[str, Any]], fields: Sequence[str] = ()) -> Table:
    """Points (newest first, as ``get_latest_metrics`` gives them) in step order."""
    shown = metric_fields(points, fields)
    table = plain_table("step", *shown, justify="right")
    for p in sorted(points, key=lambda p: p.get("step", 0)):
        _row(table, str(p.get("step")), *(number(p.get(f)) for f in shown))
    return table


def sparkline(values: Sequence[float | None], width: int = 60) -> str:
    """A one-line chart of ``values`` (the last ``width`` of them); a missing or non-finite value
    is a space, so a NaN shows as a gap rather than as a number."""
    tail = list(values)[-width:]
    finite = [v for v in tail if v is not None and math.isfinite(v)]
    if not finite:
        return " " * len(tail)
    low, high = min(finite), max(finite)
    span = high - low or 1.0
    out = []
    for v in tail:
        if v is None or not math.isfinite(v):
            out.append(" ")
        else:
            out.append(SPARK[min(int((v - low) / span * (len(SPARK) - 1) + 0.5), len(SPARK) - 1)])
    return "".join(out)


def metrics_chart(points: Sequence[Mapping[str, Any]], fields: Sequence[str] = ()) -> Table:
    """Per field: its range and a sparkline over the points in step order."""
    ordered = sorted(points, key=lambda p: p.get("step", 0))
    table = plain_table("field", "min", "max", "last", "chart")
    for field in metric_fields(points, fields):
        values = [_float(p.get(field)) for p in ordered]
        finite = [v for v in values if v is not None and math.isfinite(v)]
        _row(
            table,
            field,
            number(min(finite)) if finite else "-",
            number(max(finite)) if finite else "-",
            number(values[-1]) if values else "-",
            sparkline(values),
        )
    if ordered:
        table.caption = f"steps {ordered[0].get('step')}..{ordered[-1].get('step')}"
    return table


def _float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def anomaly_line(anomaly: Mapping[str, Any]) -> Text:
    """An anomaly and the actions taken on it, on one line."""
    line = Text()
    severity = anomaly.get("severity", "")
    line.append(f"step {anomaly.get('step')} ", style="bold")
    line.append(
        f"{anomaly.get('anomaly_type')} ({severity})",
        style="red" if severity in ("critical", "error") else "yellow",
    )
    if anomaly.get("stage"):
        line.append(f" in {anomaly['stage']}")
    line.append(f": {one_line(anomaly.get('message'))}")
    for action in anomaly.get("actions") or []:
        what = action.get("action")
        if action.get("factor") is not None:
            what = f"{what} (x{action['factor']})"
        line.append(f"  -> {what} {action.get('status')}", style="cyan")
        if action.get("refusal"):
            line.append(f" ({action['refusal']})")
    return line


def diagnosis_view(result: Mapping[str, Any]) -> RenderableType:
    """``diagnose_job``'s result: the verdict, what the stored points show, what was kept."""
    parts: list[RenderableType] = []
    if result.get("has_anomaly"):
        parts.append(
            Text(
                f"job {result['job_id']}: {result['anomaly_type']}: {result['anomaly_message']}",
                style="bold red",
            )
        )
        parts += [Text(f"  suggestion: {s}") for s in result.get("suggestions") or []]
    else:
        parts.append(Text(f"job {result['job_id']}: no anomaly", style="green"))
    found = result.get("anomalies") or []
    parts.append(Text(f"found in the stored points: {len(found)}"))
    parts += [Text("  ").append_text(anomaly_line(a)) for a in found]
    recorded = result.get("recorded") or []
    parts.append(Text(f"raised by the stream (with actions): {len(recorded)}"))
    parts += [Text("  ").append_text(anomaly_line(a)) for a in recorded]
    return Group(*parts)


# --- the live view of `submit --follow` --------------------------------------------------------


def follow_view(
    status: Mapping[str, Any] | None,
    *,
    pipeline_id: str,
    latest: Mapping[str, Mapping[str, Any]] | None = None,
    anomalies: Sequence[Mapping[str, Any]] = (),
    stale: str | None = None,
) -> RenderableType:
    """The live view: stages by layer, the latest metrics of each running job (``latest``:
    stage name -> its newest point), and the anomalies and actions so far (the last few)."""
    if status is None:
        return Text(f"pipeline {pipeline_id}: submitted, waiting for the orchestrator")
    parts: list[RenderableType] = [status_header(status, stale), status_table(status)]
    if latest:
        table = Table(title="latest metrics", title_justify="left", box=None, pad_edge=False)
        shown = metric_fields(list(latest.values()))
        table.add_column("stage")
        table.add_column("step", justify="right")
        for field in shown:
            table.add_column(field, justify="right")
        for stage, point in latest.items():
            _row(table, stage, str(point.get("step")), *(number(point.get(f)) for f in shown))
        parts.append(table)
    if anomalies:
        parts.append(Text("anomalies and actions", style="bold"))
        parts += [Text("  ").append_text(anomaly_line(a)) for a in anomalies[-8:]]
    return Group(*parts)
