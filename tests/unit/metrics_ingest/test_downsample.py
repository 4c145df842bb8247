"""Bucket arithmetic and LTTB."""

from __future__ import annotations

import math

import pytest

from posttrain.metrics_ingest.core.downsample import BucketGrid, bucket_index, lttb


def test_steps_are_spread_evenly_over_the_buckets() -> None:
    grid = BucketGrid.for_steps(0, 99, 10)
    counts = [0] * 10
    for step in range(100):
        counts[grid.index(step)] += 1
    assert counts == [10] * 10
    assert (grid.start(3), grid.end(3)) == (30.0, 40.0)


def test_never_more_buckets_than_steps() -> None:
    assert BucketGrid.for_steps(5, 7, 100).buckets == 3
    assert BucketGrid.for_steps(5, 5, 100).buckets == 1


def test_times_clamp_the_last_point_into_the_last_bucket() -> None:
    grid = BucketGrid.for_times(100.0, 200.0, 4)
    assert grid.index(100.0) == 0
    assert grid.index(199.999) == 3
    assert grid.index(200.0) == 3
    assert BucketGrid.for_times(5.0, 5.0, 4).buckets == 1


def test_bucket_index_clamps_out_of_range_values() -> None:
    assert bucket_index(-5, 0, 10, 5) == 0
    assert bucket_index(50, 0, 10, 5) == 4


def test_lttb_keeps_every_point_when_there_are_few() -> None:
    assert lttb([1, 2, 3], [1, 2, 3], 10) == [0, 1, 2]
    assert lttb([1, 2, 3, 4], [1, 2, 3, 4], 2) == [0, 1, 2, 3]


def test_lttb_keeps_the_ends_and_threshold_points() -> None:
    xs = [float(i) for i in range(1000)]
    ys = [math.sin(i / 30) for i in range(1000)]
    kept = lttb(xs, ys, 50)
    assert len(kept) == 50
    assert kept[0] == 0 and kept[-1] == 999
    assert kept == sorted(set(kept))


def test_lttb_keeps_a_lone_spike() -> None:
    xs = [float(i) for i in range(500)]
    ys = [0.0] * 500
    ys[237] = 100.0
    assert 237 in lttb(xs, ys, 20)


def test_lttb_on_a_worked_example() -> None:
    # 7 points, threshold 4: buckets {1,2} and {3,4,5} (every = 2.5). Bucket {1,2}: with (0, 0)
    # and the next bucket's mean (4, -1), triangle areas (doubled) are 5 and 22: x=2 wins.
    # Bucket {3,4,5}: with (2, 5) and the last point (6, 0): 15, 10, 17: x=5 wins.
    xs = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    ys = [0.0, 1.0, 5.0, 0.0, 0.0, -3.0, 0.0]
    assert lttb(xs, ys, 4) == [0, 2, 5, 6]


def test_lttb_refuses_misaligned_input() -> None:
    with pytest.raises(ValueError):
        lttb([1.0, 2.0], [1.0], 5)
