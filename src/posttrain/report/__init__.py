"""A pipeline run's report: an HTML page with PNG charts of each training stage's loss, reward,
KL and gradient norm (anomalies and actions marked), the stage table and the evaluation table.

``collect_report`` reads a finished pipeline through the services' query APIs (the orchestrator's
read model client, the metrics ingest's queries, the diagnostics recorder's queries);
``write_report`` draws it into a directory. The two halves meet in ``RunReport``, plain data, so
that a report can be drawn from recorded points without a running platform.
"""

from __future__ import annotations

from posttrain.report.collect import collect_report
from posttrain.report.model import (
    CHART_FIELDS,
    EvaluationRow,
    Improvement,
    Marker,
    RunReport,
    StageRun,
    improvements,
)
from posttrain.report.page import write_report

__all__ = [
    "CHART_FIELDS",
    "EvaluationRow",
    "Improvement",
    "Marker",
    "RunReport",
    "StageRun",
    "collect_report",
    "improvements",
    "write_report",
]
