"""Points become MetricsReported batches of consecutive sequence numbers."""

from __future__ import annotations

from posttrain.events.messages import MetricPoint
from posttrain.trainer_agent.core.batching import contiguous_batches
from posttrain.trainer_agent.spill import SpilledPoint


def _p(seq: int, source: str = "s", stage: str | None = None) -> SpilledPoint:
    return SpilledPoint("job", source, seq, MetricPoint(step=seq, timestamp=0.0), "p", stage, 0)


def test_runs_split_at_gaps_and_at_the_size_limit():
    batches = list(contiguous_batches([_p(s) for s in [0, 1, 2, 3, 4, 7, 8, 10]], max_points=3))
    assert [(first, [p.step for p in pts]) for _, _, first, pts in batches] == [
        (0, [0, 1, 2]),
        (3, [3, 4]),
        (7, [7, 8]),
        (10, [10]),
    ]


def test_sources_and_routings_never_share_a_batch_and_duplicates_collapse():
    points = [_p(1, "a"), _p(0, "a"), _p(0, "b"), _p(1, "a"), _p(2, "a", stage="other")]
    batches = {
        (routing.stage, source, first): len(pts)
        for routing, source, first, pts in contiguous_batches(points, 100)
    }
    assert batches == {(None, "a", 0): 2, (None, "b", 0): 1, ("other", "a", 2): 1}
