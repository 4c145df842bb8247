"""The three queries agree with a brute-force computation over the same points."""

from __future__ import annotations

import math
import random
from typing import Any

import asyncpg
import pytest

from posttrain.events.messages.metrics import MetricPoint
from posttrain.metrics_ingest import (
    UnknownField,
    get_downsampled_metrics,
    get_latest_metrics,
    get_metric_series,
    get_metrics_range,
)
from posttrain.metrics_ingest.core.downsample import lttb
from posttrain.metrics_ingest.core.wire import rows_from_points
from posttrain.metrics_ingest.store import MetricsWriter, prepare_connection

pytestmark = pytest.mark.integration

T0 = 1_780_000_000.0
STEPS = 3_000


def _dataset() -> list[tuple[str, int, MetricPoint]]:
    """Two sources of one job, interleaved in time; NaN, infinities, gaps and custom values."""
    rng = random.Random(11)
    out = []
    for s, source in enumerate(("trainer-a", "trainer-b")):
        for step in range(STEPS):
            roll = rng.random()
            loss: float | None = rng.uniform(0, 3)
            if roll < 0.01:
                loss = math.nan
            elif roll < 0.015:
                loss = math.inf
            elif roll < 0.05:
                loss = None
            custom: dict[str, Any] = {}
            if step % 4 == 0:
                custom["k"] = rng.choice([rng.uniform(-1, 1), rng.randint(0, 9), "NaN", "text"])
            point = MetricPoint(
                step=step,
                timestamp=T0 + step * 0.01 + s * 0.005,
                loss=loss,
                grad_norm=rng.uniform(0, 10),
                custom=custom,
            )
            out.append((source, step, point))  # seq = step
    return out


@pytest.fixture(scope="module")
def dataset() -> list[tuple[str, int, MetricPoint]]:
    return _dataset()


@pytest.fixture
async def job(database_url, run_id, dataset) -> str:
    job = f"{run_id}-queries"
    conn = await asyncpg.connect(database_url)
    try:
        await prepare_connection(conn)
        writer = MetricsWriter()
        for source in ("trainer-a", "trainer-b"):
            points = [(seq, p) for src, seq, p in dataset if src == source]
            await writer.write(conn, [rows_from_points(job, source, points)])
    finally:
        await conn.close()
    return job


@pytest.fixture
async def db(database_url):
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


def _stored_time(point: MetricPoint) -> float:
    """The point's time as PostgreSQL keeps it: to the nearest microsecond."""
    return round(point.timestamp * 1_000_000) / 10**6


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12)
    return bool(a == b)


def _custom(point: MetricPoint) -> Any:
    return point.custom.get("k")


async def test_latest_metrics_are_the_most_recent_points(job, db, dataset):
    latest = await get_latest_metrics(job, limit=10, db=db)
    brute = sorted(dataset, key=lambda d: d[2].timestamp, reverse=True)[:10]
    assert [(m.source, m.seq) for m in latest] == [(src, seq) for src, seq, _ in brute]
    for got, (_, _, want) in zip(latest, brute, strict=True):
        assert got.point.step == want.step
        assert _same(got.point.loss, want.loss) or got.point.loss == want.loss
        assert got.point.custom == want.custom
        assert got.point.timestamp == pytest.approx(want.timestamp, abs=1e-6)
    assert await get_latest_metrics("no-such-job", db=db) == []


async def test_a_chart_series_of_one_bucket_per_step_averages_the_finite_values(job, db, dataset):
    # 100 steps in at most 500 buckets: one bucket a step, both sources' values in it.
    series = await get_metric_series(
        job, ["loss", "grad_norm"], points=500, step_from=100, step_to=199, db=db
    )
    steps = list(range(100, 200))
    assert series["step"] == steps
    for name in ("loss", "grad_norm"):
        by_step = {s: [getattr(p, name) for _, _, p in dataset if p.step == s] for s in steps}
        finite = {
            s: [v for v in vs if v is not None and math.isfinite(v)] for s, vs in by_step.items()
        }
        want = [sum(finite[s]) / len(finite[s]) if finite[s] else None for s in steps]
        got = series["values"][name]
        assert [g is None for g in got] == [w is None for w in want], name
        assert [g for g in got if g is not None] == pytest.approx(
            [w for w in want if w is not None]
        )
        bad = [s for s in steps if any(v is not None and not math.isfinite(v) for v in by_step[s])]
        assert series["non_finite"][name] == bad
    assert (await get_metric_series("no-such-job", ["loss"], db=db))["step"] == []


async def test_a_step_range_returns_the_chosen_fields_in_order(job, db, dataset):
    fields = ["loss", "grad_norm", "custom.k"]
    series = await get_metrics_range(job, fields, step_from=100, step_to=900, db=db)
    brute = sorted(
        (d for d in dataset if 100 <= d[2].step <= 900), key=lambda d: (d[2].step, d[2].timestamp)
    )
    assert series.steps == [p.step for _, _, p in brute]
    assert all(
        _same(a, b) or a == b
        for a, b in zip(series.values["loss"], [p.loss for _, _, p in brute], strict=True)
    )
    assert series.values["grad_norm"] == pytest.approx([p.grad_norm for _, _, p in brute])
    assert series.values["custom.k"] == [_custom(p) for _, _, p in brute]


async def test_a_time_range_returns_the_points_of_that_time(job, db, dataset):
    lo, hi = T0 + 5.0, T0 + 9.0
    series = await get_metrics_range(
        job, ["grad_norm"], time_from=lo, time_to=hi, order_by="time", db=db
    )
    brute = sorted(
        (d for d in dataset if lo <= _stored_time(d[2]) <= hi), key=lambda d: d[2].timestamp
    )
    assert len(series) == len(brute) > 0
    assert series.values["grad_norm"] == pytest.approx([p.grad_norm for _, _, p in brute])
    assert series.timestamps == pytest.approx([p.timestamp for _, _, p in brute], abs=1e-6)


def _brute_buckets(xs_ys: list[tuple[float, float]], lo: float, span: float, n: int) -> dict:
    buckets: dict[int, list[float]] = {}
    for x, y in xs_ys:
        b = min(n - 1, max(0, math.floor((x - lo) * n / span)))
        buckets.setdefault(b, []).append(y)
    out = {}
    for b, ys in buckets.items():
        finite = [y for y in ys if math.isfinite(y)]
        out[b] = (
            len(ys),
            min(finite) if finite else None,
            max(finite) if finite else None,
            math.fsum(finite) / len(finite) if finite else None,
            len(ys) - len(finite),
        )
    return out


async def test_minmax_buckets_by_step_agree_with_brute_force(job, db, dataset):
    result = await get_downsampled_metrics(job, "loss", buckets=37, db=db)
    values = [(float(p.step), p.loss) for _, _, p in dataset if p.loss is not None]
    brute = _brute_buckets(values, 0.0, float(STEPS), 37)
    got = {b.index: (b.count, b.min, b.max, b.mean, b.non_finite) for b in result.buckets}
    assert got.keys() == brute.keys() == set(range(37))
    for b, (n, lo, hi, mean, bad) in brute.items():
        assert got[b][0] == n and got[b][4] == bad
        assert got[b][1] == lo and got[b][2] == hi
        assert got[b][3] == pytest.approx(mean, rel=1e-12)
    assert result.source_points == len(values)


async def test_minmax_buckets_by_time_of_a_custom_value_agree_with_brute_force(job, db, dataset):
    result = await get_downsampled_metrics(job, "custom.k", buckets=23, axis="time", db=db)
    times = [_stored_time(p) for _, _, p in dataset]
    lo, hi = min(times), max(times)
    values = []
    for _, _, p in dataset:
        k = _custom(p)
        if isinstance(k, int | float) and not isinstance(k, bool):
            values.append((_stored_time(p), float(k)))
        elif k == "NaN":
            values.append((_stored_time(p), math.nan))
    brute = _brute_buckets(values, lo, hi - lo, 23)
    got = {b.index: (b.count, b.min, b.max, b.mean, b.non_finite) for b in result.buckets}
    assert got.keys() == brute.keys()
    for b, want in brute.items():
        assert got[b][0] == want[0] and got[b][4] == want[4]
        assert got[b][1:4] == pytest.approx(want[1:4], rel=1e-12)


async def test_lttb_agrees_with_lttb_over_every_point(job, db, dataset):
    result = await get_downsampled_metrics(job, "loss", buckets=200, method="lttb", db=db)
    ordered = sorted(
        (d for d in dataset if d[2].loss is not None and math.isfinite(d[2].loss)),
        key=lambda d: (d[2].step, d[2].timestamp),
    )
    xs = [float(p.step) for _, _, p in ordered]
    ys = [float(p.loss) for _, _, p in ordered]  # type: ignore[arg-type]
    assert result.points == [(xs[i], ys[i]) for i in lttb(xs, ys, 200)]
    assert len(result.points) == 200 and result.source_points == len(xs)


async def test_unknown_fields_are_refused_with_the_known_ones_named(job, db):
    with pytest.raises(UnknownField, match="grad_norm"):
        await get_metrics_range(job, ["loss; DROP TABLE metrics"], db=db)
