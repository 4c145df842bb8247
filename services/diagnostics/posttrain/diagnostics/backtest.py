"""``posttrain diagnose backtest``: a detector configuration and action policy run over stored
metrics (read through metrics_ingest's query API), printed step by step.

    posttrain diagnose backtest --job JOB [--policy FILE] [--json]
    posttrain diagnose backtest --pipeline PIPELINE [--policy FILE] [--json]

``FILE`` is the format the stream reads from ``POSTTRAIN_DIAGNOSTICS_CONFIG`` (JSON or YAML,
``{"default": {...}, "pipelines": {...}}``); without it, that variable's file or the defaults:
what the running stream would do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, TextIO

from posttrain.diagnostics.batch import SourcedPoint, emission_order
from posttrain.diagnostics.core.backtest import (
    BacktestStep,
    JobBacktest,
    JobRoute,
    backtest_job,
    describe,
    fmt_value,
)
from posttrain.diagnostics.core.config import ConfigBook
from posttrain.metrics_ingest.queries import get_job_points, get_metric_jobs

# An asyncpg Pool or Connection.
Db = Any


class NoMetrics(LookupError):
    """Nothing stored for the job or pipeline asked about."""


async def run_backtest(
    book: ConfigBook, *, job_id: str | None = None, pipeline_id: str | None = None, db: Db
) -> list[JobBacktest]:
    """Backtest every job with stored metrics of ``pipeline_id``, or the job ``job_id``, each
    with its pipeline's configuration from ``book``."""
    jobs = await get_metric_jobs(pipeline_id=pipeline_id, job_id=job_id, db=db)
    if not jobs:
        what = f"job {job_id!r}" if job_id is not None else f"pipeline {pipeline_id!r}"
        raise NoMetrics(f"no stored metrics for {what}")
    results = []
    for job in jobs:
        stored = await get_job_points(job.job_id, db=db)
        ordered = emission_order([SourcedPoint(m.source, m.seq, m.point) for m in stored])
        results.append(
            backtest_job(
                JobRoute(job.job_id, job.pipeline_id, job.stage, job.attempt),
                ((p.source, p.seq, p.point) for p in ordered),
                book.for_pipeline(job.pipeline_id),
            )
        )
    return results


_COLUMNS = ("step", "anomaly", "severity", "value", "would do", "message")
_MESSAGE_WIDTH = 80


def would_do(step: BacktestStep) -> str:
    """``request pause``, ``request adjust_learning_rate (x0.1)``, ``nothing (why)``."""
    if step.action is None:
        return f"nothing ({step.note})"
    detail = describe(step.action)
    return f"{step.outcome} {step.action.action}" + (f" ({detail})" if detail else "")


def print_table(results: Sequence[JobBacktest], out: TextIO) -> None:
    """Per job: one line per anomaly, in the order raised, with what the policy would have
    done; then the totals over every job."""
    anomalies: Counter[str] = Counter()
    actions: Counter[str] = Counter()
    for result in results:
        route = result.route
        where = (
            f" (pipeline {route.pipeline_id}, stage {route.stage}, attempt {route.attempt})"
            if route.pipeline_id is not None
            else ""
        )
        out.write(
            f"job {route.job_id}{where}: {result.points} points, {len(result.steps)} anomalies\n"
        )
        rows = [_COLUMNS] + [
            (
                str(s.step),
                s.anomaly.anomaly_type,
                s.anomaly.severity,
                fmt_value(s.anomaly.value),
                would_do(s),
                s.anomaly.message,
            )
            for s in result.steps
        ]
        if len(rows) > 1:
            _write_rows(rows, out)
        anomalies.update(result.anomaly_counts())
        actions.update(result.action_counts())
        out.write("\n")
    out.write(f"anomalies: {_counts(anomalies)}\n")
    out.write(f"actions: {_counts(actions)}\n")


def _write_rows(rows: Sequence[tuple[str, ...]], out: TextIO) -> None:
    """Aligned columns; the last (the message) is cut to a readable width."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [
            cell.rjust(width) if i in (0, 3) else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row[:-1], widths, strict=True))
        ]
        message = (
            row[-1] if len(row[-1]) <= _MESSAGE_WIDTH else row[-1][: _MESSAGE_WIDTH - 3] + "..."
        )
        out.write("  " + "  ".join(cells) + "  " + message + "\n")


def _counts(counter: Counter[str]) -> str:
    if not counter:
        return "none"
    return ", ".join(f"{name} {n}" for name, n in sorted(counter.items()))
