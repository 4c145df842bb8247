"""What the metrics ingest tells live views when it stores a batch: one notification per job,
with the highest step stored and the pipeline the points were routed to."""

from __future__ import annotations

import orjson

from posttrain.events.messages.metrics import MetricPoint
from posttrain.metrics_ingest.core.wire import rows_from_points
from posttrain.metrics_ingest.store import notifications


def _report(job: str, steps: list[int], pipeline: str | None = None):
    points = [(i, MetricPoint(step=s, timestamp=1.0 + s)) for i, s in enumerate(steps)]
    return rows_from_points(job, "trainer", points, pipeline_id=pipeline)


def test_one_notification_per_job_with_its_highest_step_and_pipeline():
    payloads = notifications(
        [
            _report("j1", [5, 9, 7], "p1"),
            _report("j2", [3]),
            _report("j1", [8], None),
            _report("j3", []),
        ]
    )
    assert [orjson.loads(p) for p in payloads] == [
        {"job_id": "j1", "step": 9, "pipeline_id": "p1"},
        {"job_id": "j2", "step": 3, "pipeline_id": None},
    ]
