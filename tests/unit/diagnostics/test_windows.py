"""The rolling statistics agree with a brute-force computation."""

from __future__ import annotations

import random
import statistics

import pytest

from posttrain.diagnostics.core.windows import EmaStats, RollingMedian, RollingWindow, linear_slope


def test_rolling_window_mean_std_match_brute_force_with_large_offset():
    rng = random.Random(0)
    values = [1e6 + rng.gauss(0, 0.01) for _ in range(1000)]
    w = RollingWindow(64)
    for i, v in enumerate(values):
        w.push(v)
        tail = values[max(0, i - 63) : i + 1]
        assert w.mean == pytest.approx(statistics.fmean(tail), rel=1e-12)
        if len(tail) > 1:
            assert w.std == pytest.approx(statistics.pstdev(tail), rel=1e-6)


def test_rolling_median_and_slope():
    rng = random.Random(1)
    values = [rng.random() for _ in range(300)]
    m = RollingMedian(25)
    for i, v in enumerate(values):
        m.push(v)
        assert m.median == statistics.median(values[max(0, i - 24) : i + 1])
    assert RollingMedian.from_dict(m.to_dict(), 25).median == m.median
    assert linear_slope([3.0 + 2.0 * i for i in range(10)]) == pytest.approx(2.0)
    assert linear_slope([1.0]) == 0.0


def test_ema_tracks_mean_and_variance():
    rng = random.Random(2)
    ema = EmaStats(0.97)
    for _ in range(5000):
        ema.push(rng.gauss(5.0, 2.0))
    assert ema.mean == pytest.approx(5.0, abs=0.5)
    assert ema.std == pytest.approx(2.0, rel=0.3)
    restored = EmaStats.from_dict(ema.to_dict(), 0.97)
    assert (restored.mean, restored.var, restored.count) == (ema.mean, ema.var, ema.count)
    with pytest.raises(ValueError):
        EmaStats(1.0)
    with pytest.raises(ValueError):
        RollingWindow(0)
