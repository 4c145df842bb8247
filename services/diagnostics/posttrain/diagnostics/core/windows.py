"""Rolling statistics that serialize to JSON-able dicts: a fixed-size window with O(1) mean and
standard deviation, a rolling median, and an exponential moving mean/variance (ZClip).

Non-finite values never enter a window: the NaN/Inf rule reports them, and one NaN would
otherwise poison every statistic after it.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from typing import Any

JsonDict = dict[str, Any]
_sqrt = math.sqrt


class RollingWindow:
    """The last ``size`` values with their mean and population standard deviation.

    Sums are kept shifted by a reference value (the "shifted data" algorithm) so that a series
    with a large mean and a tiny spread keeps its precision; they are recomputed exactly every
    ``size`` pushes so that rounding never accumulates.
    """

    __slots__ = ("_shift", "_since_recompute", "_sum", "_sumsq", "size", "values")

    def __init__(self, size: int, values: list[float] | None = None) -> None:
        if size < 1:
            raise ValueError(f"window size must be at least 1, got {size}")
        self.size = size
        self.values: deque[float] = deque(maxlen=size)
        self._shift = 0.0
        self._sum = 0.0
        self._sumsq = 0.0
        self._since_recompute = 0
        if values:
            self.values.extend(values[-size:])
            self._recompute()

    def __len__(self) -> int:
        return len(self.values)

    def _recompute(self) -> None:
        self._shift = self.values[0] if self.values else 0.0
        k = self._shift
        self._sum = math.fsum(v - k for v in self.values)
        self._sumsq = math.fsum((v - k) * (v - k) for v in self.values)
        self._since_recompute = 0

    def push(self, value: float) -> None:
        # Each sum is read and written once; the arithmetic (and so every bit) is the one of
        # ``sum -= old; sum += d``.
        values = self.values
        n = len(values)
        if n:
            k = self._shift
            total = self._sum
            sumsq = self._sumsq
        else:
            k = self._shift = value
            total = sumsq = 0.0
        size = self.size
        if n == size:
            old = values[0] - k
            total -= old
            sumsq -= old * old
        values.append(value)
        d = value - k
        self._sum = total + d
        self._sumsq = sumsq + d * d
        since = self._since_recompute + 1
        if since >= size:
            self._recompute()
        else:
            self._since_recompute = since

    @property
    def mean(self) -> float:
        n = len(self.values)
        return self._shift + self._sum / n if n else 0.0

    @property
    def std(self) -> float:
        n = len(self.values)
        if n < 2:
            return 0.0
        m = self._sum / n
        return math.sqrt(max(self._sumsq / n - m * m, 0.0))

    def mean_std(self) -> tuple[float, float]:
        """(``mean``, ``std``) in one call: the same floats as the two properties."""
        n = len(self.values)
        if not n:
            return 0.0, 0.0
        total = self._sum
        mean = self._shift + total / n
        if n < 2:
            return mean, 0.0
        m = total / n
        var = self._sumsq / n - m * m
        # max(var, 0.0) without the call: max keeps its first argument unless a later one is
        # greater (so a NaN, or -0.0, is kept as max keeps it).
        return mean, _sqrt(0.0 if var < 0.0 else var)

    def to_dict(self) -> JsonDict:
        # The running sums travel too, so that a restored window computes bit for bit what the
        # original would have (a restarted stream and the batch then raise identical anomalies).
        return {
            "size": self.size,
            "values": list(self.values),
            "sums": [self._shift, self._sum, self._sumsq, self._since_recompute],
        }

    @classmethod
    def from_dict(cls, data: JsonDict, size: int) -> RollingWindow:
        """Restore a window; ``size`` is the configured size now (a changed configuration keeps
        the most recent values that fit)."""
        values = [float(v) for v in data.get("values", [])]
        window = cls(size, values)
        sums = data.get("sums")
        if sums and data.get("size") == size:
            window._shift, window._sum, window._sumsq = (float(x) for x in sums[:3])
            window._since_recompute = int(sums[3])
        return window


class RollingMedian:
    """The median of the last ``size`` values (a sorted copy kept beside the queue)."""

    __slots__ = ("_sorted", "size", "values")

    def __init__(self, size: int, values: list[float] | None = None) -> None:
        if size < 1:
            raise ValueError(f"window size must be at least 1, got {size}")
        self.size = size
        self.values: deque[float] = deque(maxlen=size)
        self._sorted: list[float] = []
        for v in (values or [])[-size:]:
            self.push(v)

    def __len__(self) -> int:
        return len(self.values)

    def push(self, value: float) -> None:
        if len(self.values) == self.size:
            old = self.values[0]
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self.values.append(value)
        bisect.insort(self._sorted, value)

    @property
    def median(self) -> float:
        s = self._sorted
        n = len(s)
        if n == 0:
            return 0.0
        mid = n // 2
        return s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2.0

    def to_dict(self) -> JsonDict:
        return {"size": self.size, "values": list(self.values)}

    @classmethod
    def from_dict(cls, data: JsonDict, size: int) -> RollingMedian:
        return cls(size, [float(v) for v in data.get("values", [])])


class EmaStats:
    """Exponential moving mean and variance: ``mean <- alpha*mean + (1-alpha)*x`` (ZClip's form,
    alpha close to 1 means a long memory)."""

    __slots__ = ("alpha", "count", "mean", "var")

    def __init__(self, alpha: float, mean: float = 0.0, var: float = 0.0, count: int = 0) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"EMA alpha must be in (0, 1), got {alpha}")
        self.alpha = alpha
        self.mean = mean
        self.var = var
        self.count = count

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 0.0))

    def push(self, value: float) -> None:
        if self.count == 0:
            self.mean = value
            self.var = 0.0
        else:
            a = self.alpha
            delta = value - self.mean
            self.mean = a * self.mean + (1.0 - a) * value
            # West's exponentially weighted variance: stays non-negative, same memory as the mean.
            self.var = a * (self.var + (1.0 - a) * delta * delta)
        self.count += 1

    def to_dict(self) -> JsonDict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    @classmethod
    def from_dict(cls, data: JsonDict, alpha: float) -> EmaStats:
        return cls(
            alpha,
            float(data.get("mean", 0.0)),
            float(data.get("var", 0.0)),
            int(data.get("count", 0)),
        )


def linear_slope(values: list[float]) -> float:
    """Least-squares slope of ``values`` against their index (per step); 0 for fewer than 2."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x = (n - 1) / 2.0
    mean_y = math.fsum(values) / n
    num = math.fsum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    den = math.fsum((i - mean_x) ** 2 for i in range(n))
    return num / den
