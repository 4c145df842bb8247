"""Series for charts over millions of points: equal-width buckets (min/max/mean per bucket,
computed by PostgreSQL) and LTTB (Steinarsson's Largest-Triangle-Three-Buckets, computed here).

The bucket of a coordinate is defined once, in ``bucket_index``; ``bucket_sql`` is the same
arithmetic for PostgreSQL (double precision on both sides, the same operations in the same
order, so a point never falls in different buckets depending on who computes it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BucketGrid:
    """``buckets`` equal slices of [lo, lo + span)."""

    lo: float
    span: float
    buckets: int

    def __post_init__(self) -> None:
        if self.buckets < 1:
            raise ValueError(f"buckets must be at least 1, got {self.buckets}")
        if not self.span > 0:
            raise ValueError(f"span must be positive, got {self.span}")

    @classmethod
    def for_steps(cls, first: int, last: int, buckets: int) -> BucketGrid:
        """Integer steps first..last inclusive: every bucket covers the same number of steps
        (give or take one), and no more buckets than steps."""
        count = last - first + 1
        return cls(float(first), float(count), max(1, min(buckets, count)))

    @classmethod
    def for_times(cls, first: float, last: float, buckets: int) -> BucketGrid:
        span = last - first
        if span <= 0:
            return cls(first, 1.0, 1)
        # The last point sits on the upper edge: it is clamped into the last bucket.
        return cls(first, span, buckets)

    def index(self, x: float) -> int:
        return bucket_index(x, self.lo, self.span, self.buckets)

    def start(self, index: int) -> float:
        return self.lo + index * self.span / self.buckets

    def end(self, index: int) -> float:
        return self.lo + (index + 1) * self.span / self.buckets


def bucket_index(x: float, lo: float, span: float, buckets: int) -> int:
    """floor((x - lo) * buckets / span), clamped to [0, buckets - 1]."""
    raw = math.floor((x - lo) * buckets / span)
    return min(buckets - 1, max(0, raw))


def bucket_sql(expr: str, lo: str, span: str, buckets: str) -> str:
    """``bucket_index`` as a SQL expression over double precision operands."""
    return (
        f"LEAST({buckets} - 1, GREATEST(0, "
        f"floor((({expr})::float8 - {lo}::float8) * {buckets}::float8 / {span}::float8)))::int"
    )


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket of a series: the finite values' min/max/mean, and how many values were not
    finite (a NaN loss must show on the chart, not vanish in the mean)."""

    index: int
    start: float
    end: float
    count: int
    min: float | None
    max: float | None
    mean: float | None
    non_finite: int


def lttb(xs: Sequence[float], ys: Sequence[float], threshold: int) -> list[int]:
    """The indices of the points LTTB keeps: the first, the last, and in each of the
    ``threshold - 2`` buckets between them the point forming the largest triangle with the point
    kept before it and the mean of the next bucket. ``xs`` must be sorted; values must be
    finite. Fewer points than ``threshold`` (or a threshold under 3) keep every point."""
    n = len(xs)
    if len(ys) != n:
        raise ValueError("xs and ys differ in length")
    if threshold >= n or threshold < 3:
        return list(range(n))
    every = (n - 2) / (threshold - 2)
    kept = [0]
    a = 0
    for i in range(threshold - 2):
        # The mean of the next bucket (the last point when this is the last bucket).
        next_start = math.floor((i + 1) * every) + 1
        next_end = min(math.floor((i + 2) * every) + 1, n)
        span = next_end - next_start
        avg_x = math.fsum(xs[next_start:next_end]) / span
        avg_y = math.fsum(ys[next_start:next_end]) / span
        # This bucket's point with the largest triangle.
        start = math.floor(i * every) + 1
        end = math.floor((i + 1) * every) + 1
        ax = xs[a]
        ay = ys[a]
        best = start
        best_area = -1.0
        for j in range(start, end):
            area = abs((ax - avg_x) * (ys[j] - ay) - (ax - xs[j]) * (avg_y - ay))
            if area > best_area:
                best_area = area
                best = j
        kept.append(best)
        a = best
    kept.append(n - 1)
    return kept
