"""Reading metrics back: the Python API the gateway and the SDK use.

- ``get_latest_metrics(job_uuid, limit=10)``: the most recently emitted points, newest first.
- ``get_metrics_range(job_uuid, fields, ...)``: chosen fields over a step range and/or a time
  range, in order.
- ``get_downsampled_metrics(job_uuid, field, ...)``: one field over millions of points, reduced
  for a chart: per-bucket min/max/mean (computed by PostgreSQL) or LTTB.
- ``get_job_points(job_uuid, ...)``: every stored point of a job, whole, in each source's
  emission order (what a replay of the job's metrics needs: the batch diagnosis, a backtest).
- ``get_metric_jobs(pipeline_id=... | job_id=...)``: the jobs that have metrics, with the
  pipeline, stage and attempt their points were reported for.

Every query names one job, so it reads one partition of ``metrics`` through an index:
``(job_no, step, ...)`` for steps, ``(job_no, ts)`` for times. Fields are canonical names
(``loss``, ``grad_norm``...), ``epoch``, or ``custom.<key>`` for a value kept under custom.

A job may have several runs (a script started twice under one job id, or a stage's attempts:
see ``metric_runs`` in the migrations). The point queries read the job's latest run unless
``run`` names another (a number from 1, as ``get_metric_runs`` lists them) or ``"all"``.

Each function takes ``db`` (an asyncpg pool or connection); without it, a pool on
``DATABASE_URL`` is opened on first use (``close_default_pool()`` closes it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import orjson

from posttrain.events.messages.metrics import CORE_FIELDS, MetricPoint
from posttrain.events.nonfinite import NON_FINITE
from posttrain.metrics_ingest.core.downsample import Bucket, BucketGrid, bucket_sql, lttb
from posttrain.service.settings import database_url

# An asyncpg Pool or Connection (asyncpg ships no type hints).
Db = Any
Axis = Literal["step", "time"]
Method = Literal["minmax", "lttb"]

CUSTOM_PREFIX = "custom."
_COLUMNS = frozenset({"epoch", *CORE_FIELDS})
# The wire's strings for non-finite floats (``nonfinite``), as SQL literals.
_NON_FINITE_TEXT = "(" + ", ".join(f"'{text}'" for text in NON_FINITE) + ")"
_NON_FINITE_SQL = "(" + ", ".join(f"'{text}'::float8" for text in NON_FINITE) + ")"


class UnknownField(ValueError):
    """A field name that is neither a column nor ``custom.<key>``."""


@dataclass(frozen=True, slots=True)
class StoredMetric:
    """A stored point with its permanent identity. Its values read as attributes, as on the
    seed's points (``m.loss``, ``m.step``, ``m.custom``), and ``job_uuid`` is ``job_id``. As in
    the seed, ``m.loss`` of an RL point that reports only ``policy_loss`` is that loss."""

    job_id: str
    source: str
    seq: int
    point: MetricPoint

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: the point's fields, never private names (copy
        # and pickle probe for those, and must get AttributeError).
        if name == "job_uuid":
            return self.job_id
        if name == "loss" and self.point.loss is None:
            # The seed's callback reports policy_loss and its monitor reads m.loss.
            return self.point.policy_loss
        if not name.startswith("_") and name in MetricPoint.model_fields:
            return getattr(self.point, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


@dataclass(frozen=True, slots=True)
class MetricJob:
    """A job that has stored metrics, and where its points said they came from."""

    job_id: str
    pipeline_id: str | None
    stage: str | None
    attempt: int | None


@dataclass(frozen=True, slots=True)
class MetricSeries:
    """Chosen fields of a job's points, one list per field, aligned with ``steps``."""

    job_id: str
    fields: tuple[str, ...]
    steps: list[int] = dataclasses.field(default_factory=list)
    timestamps: list[float] = dataclasses.field(default_factory=list)
    values: dict[str, list[Any]] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.steps)


@dataclass(frozen=True, slots=True)
class DownsampledSeries:
    """One field reduced for a chart. ``method`` minmax fills ``buckets`` (buckets without a
    value are left out); lttb fills ``points`` as (x, y) pairs. ``x`` is the step, or the Unix
    time in seconds when ``axis`` is time. ``source_points`` is how many values were reduced."""

    job_id: str
    field: str
    method: Method
    axis: Axis
    source_points: int
    buckets: list[Bucket] = dataclasses.field(default_factory=list)
    points: list[tuple[float, float]] = dataclasses.field(default_factory=list)


class Params:
    """Positional query parameters: ``add`` returns the placeholder of the value it adds."""

    def __init__(self, *values: Any) -> None:
        self.values: list[Any] = list(values)

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def value_sql(name: str, params: Params) -> str:
    """The SQL expression of a field of ``metrics m``, or ``UnknownField``. Column names come
    from a fixed set; a custom key travels as a parameter, never inside the SQL text."""
    if name in _COLUMNS:
        return f"m.{name}"
    if name.startswith(CUSTOM_PREFIX) and len(name) > len(CUSTOM_PREFIX):
        return f"(m.custom -> {params.add(name[len(CUSTOM_PREFIX) :])}::text)"
    raise UnknownField(
        f"unknown metric field {name!r}: use one of {', '.join(sorted(_COLUMNS))} "
        f"or {CUSTOM_PREFIX}<key>"
    )


def numeric_sql(name: str, params: Params) -> str:
    """Like ``value_sql`` but always float8: a custom value that is not a number (or one of the
    strings "NaN"/"Infinity"/"-Infinity") is NULL."""
    if name in _COLUMNS:
        return value_sql(name, params)
    expr = value_sql(name, params)
    text = f"({expr} #>> '{{}}')"
    return (
        f"(CASE WHEN jsonb_typeof({expr}) = 'number' "
        f"OR {text} IN {_NON_FINITE_TEXT} THEN {text}::float8 END)"
    )


_JOBS: dict[str, int] = {}


async def _job_no(db: Db, job_id: str) -> int | None:
    # Job numbers never change once given: remember them (only those that exist).
    known = _JOBS.get(job_id)
    if known is None:
        known = await db.fetchval("SELECT job_no FROM metric_jobs WHERE job_id = $1", job_id)
        if known is not None:
            _JOBS[job_id] = known
    return known


Run = int | Literal["all"] | None  # None: the latest run


@dataclass(frozen=True, slots=True)
class MetricRun:
    """One run of a job: its number, its sources, and when it first and last reported."""

    run: int
    sources: tuple[str, ...]
    points: int
    first_at: datetime | None
    last_at: datetime | None


async def _run_sources(db: Db, job_no: int, run: Run) -> list[int] | None:
    """The source numbers of the chosen run of a job (None: every run)."""
    if run == "all":
        return None
    if run is not None and (isinstance(run, bool) or not isinstance(run, int) or run < 1):
        raise ValueError(f"run must be a run number from 1, 'all' or None, got {run!r}")
    sources = await db.fetchval(
        """
        SELECT coalesce(array_agg(source_no), '{}') FROM metric_sources
        WHERE job_no = $1 AND run = coalesce($2::int,
            (SELECT max(run) FROM metric_sources WHERE job_no = $1))
        """,
        job_no,
        run,
    )
    return list(sources)


def _in_run(sources: list[int] | None, params: Params) -> str:
    """The SQL condition on ``m`` that keeps the chosen run's points ("" for every run)."""
    return "" if sources is None else f" AND m.source_no = ANY({params.add(sources)}::int[])"


@dataclass(frozen=True, slots=True)
class _JobRun:
    """A job's number and the chosen run of it, as a query over ``metrics m`` needs them."""

    job_no: int
    sources: list[int] | None  # the run's source numbers (None: every run)
    in_run: str  # the SQL condition on ``m`` that keeps the run's points


async def _job_run(db: Db, job_uuid: str, run: Run, params: Params) -> _JobRun | None:
    """The job (None when it has no stored points) and its run; the job's number becomes
    ``$1`` of ``params``, whose first value holds its place."""
    job_no = await _job_no(db, job_uuid)
    if job_no is None:
        return None
    params.values[0] = job_no
    sources = await _run_sources(db, job_no, run)
    return _JobRun(job_no, sources, _in_run(sources, params))


async def get_metric_runs(job_uuid: str, *, db: Db | None = None) -> list[MetricRun]:
    """The runs of a job, oldest first (the last is what the point queries read by default)."""
    db = db or await default_pool()
    job_no = await _job_no(db, job_uuid)
    if job_no is None:
        return []
    rows = await db.fetch(
        """
        SELECT s.run, array_agg(s.source ORDER BY s.source_no) AS sources,
               (SELECT count(*) FROM metrics m
                 WHERE m.job_no = $1 AND m.source_no = ANY(array_agg(s.source_no))) AS points,
               (SELECT min(m.ts) FROM metrics m
                 WHERE m.job_no = $1 AND m.source_no = ANY(array_agg(s.source_no))) AS first_at,
               (SELECT max(m.ts) FROM metrics m
                 WHERE m.job_no = $1 AND m.source_no = ANY(array_agg(s.source_no))) AS last_at
        FROM metric_sources s WHERE s.job_no = $1
        GROUP BY s.run ORDER BY s.run
        """,
        job_no,
    )
    return [
        MetricRun(r["run"], tuple(r["sources"]), r["points"], r["first_at"], r["last_at"])
        for r in rows
    ]


def _epoch(value: float | datetime | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromtimestamp(value, UTC)


async def get_latest_metrics(
    job_uuid: str, limit: int = 10, *, run: Run = None, db: Db | None = None
) -> list[StoredMetric]:
    """The ``limit`` most recently emitted points of a job's run (by timestamp), newest first."""
    if limit <= 0:
        return []
    return await _stored_points(
        db or await default_pool(),
        job_uuid,
        run,
        limit,
        tail="ORDER BY m.ts DESC, m.step DESC, m.seq DESC LIMIT $2",
    )


def _stored_point(job_uuid: str, row: asyncpg.Record) -> StoredMetric:
    values = {f: row[f] for f in CORE_FIELDS if row[f] is not None}
    point = MetricPoint(
        step=row["step"],
        epoch=row["epoch"],
        timestamp=row["ts"].timestamp(),
        custom=orjson.loads(row["custom"]) if row["custom"] is not None else {},
        **values,
    )
    return StoredMetric(job_uuid, row["source"], row["seq"], point)


async def get_job_points(
    job_uuid: str, *, step_to: int | None = None, run: Run = None, db: Db | None = None
) -> list[StoredMetric]:
    """Every stored point of a job's run (with step at most ``step_to`` when given), whole,
    ordered by source and then seq: each source's points in the order they were emitted."""
    return await _stored_points(
        db or await default_pool(),
        job_uuid,
        run,
        step_to,
        condition=" AND ($2::bigint IS NULL OR m.step <= $2)",
        tail="ORDER BY s.source, m.seq",
    )


async def _stored_points(
    db: Db, job_uuid: str, run: Run, arg: Any, *, condition: str = "", tail: str
) -> list[StoredMetric]:
    """The whole stored points of a job's run that meet ``condition``, as ``tail`` orders (and
    limits) them; ``arg`` is ``$2`` in both."""
    params = Params(None, arg)
    job = await _job_run(db, job_uuid, run, params)
    if job is None:
        return []
    columns = ", ".join(f"m.{f}" for f in CORE_FIELDS)
    rows = await db.fetch(
        f"""
        SELECT s.source, m.seq, m.step, m.epoch, m.ts, {columns}, m.custom
        FROM metrics m JOIN metric_sources s ON s.source_no = m.source_no
        WHERE m.job_no = $1{condition}{job.in_run}
        {tail}
        """,
        *params.values,
    )
    return [_stored_point(job_uuid, row) for row in rows]


async def get_metric_jobs(
    *, pipeline_id: str | None = None, job_id: str | None = None, db: Db | None = None
) -> list[MetricJob]:
    """The jobs with stored metrics of a pipeline (or the one job named), in the order their
    first points arrived. At least one of ``pipeline_id`` and ``job_id`` is required."""
    if pipeline_id is None and job_id is None:
        raise ValueError("name a pipeline_id or a job_id")
    db = db or await default_pool()
    rows = await db.fetch(
        """
        SELECT job_id, pipeline_id, stage, attempt FROM metric_jobs
        WHERE ($1::text IS NULL OR pipeline_id = $1) AND ($2::text IS NULL OR job_id = $2)
        ORDER BY job_no
        """,
        pipeline_id,
        job_id,
    )
    return [MetricJob(r["job_id"], r["pipeline_id"], r["stage"], r["attempt"]) for r in rows]


async def get_metrics_range(
    job_uuid: str,
    fields: Sequence[str],
    *,
    step_from: int | None = None,
    step_to: int | None = None,
    time_from: float | datetime | None = None,
    time_to: float | datetime | None = None,
    order_by: Axis = "step",
    limit: int | None = None,
    run: Run = None,
    db: Db | None = None,
) -> MetricSeries:
    """The chosen fields of a job's points with step in [step_from, step_to] and time in
    [time_from, time_to] (each bound optional; times as Unix seconds or datetimes), ordered by
    step or time. Custom values come back as their JSON values; NaN stays NaN."""
    chosen = tuple(fields)
    params = Params(None)  # $1: the job number, known below
    exprs = [value_sql(name, params) for name in chosen]
    series = MetricSeries(job_uuid, chosen, values={name: [] for name in chosen})
    db = db or await default_pool()
    job = await _job_run(db, job_uuid, run, params)
    if job is None:
        return series
    where = ["m.job_no = $1" + job.in_run]
    if step_from is not None:
        where.append(f"m.step >= {params.add(step_from)}")
    if step_to is not None:
        where.append(f"m.step <= {params.add(step_to)}")
    if time_from is not None:
        where.append(f"m.ts >= {params.add(_epoch(time_from))}")
    if time_to is not None:
        where.append(f"m.ts <= {params.add(_epoch(time_to))}")
    # By step: the identity index's own order, so a long range streams without a sort.
    order = "m.step, m.source_no, m.seq" if order_by == "step" else "m.ts, m.step, m.seq"
    sql = (
        f"SELECT m.step, m.ts{''.join(', ' + e for e in exprs)} FROM metrics m "
        f"WHERE {' AND '.join(where)} ORDER BY {order}"
    )
    if limit is not None:
        sql += f" LIMIT {params.add(limit)}"
    rows = await db.fetch(sql, *params.values)
    custom = [name.startswith(CUSTOM_PREFIX) for name in chosen]
    for row in rows:
        series.steps.append(row[0])
        series.timestamps.append(row[1].timestamp())
        for i, name in enumerate(chosen):
            value = row[2 + i]
            if custom[i] and value is not None:
                value = orjson.loads(value)
            series.values[name].append(value)
    return series


async def get_downsampled_metrics(
    job_uuid: str,
    field: str,
    *,
    buckets: int = 500,
    method: Method = "minmax",
    axis: Axis = "step",
    start: float | None = None,
    end: float | None = None,
    run: Run = None,
    db: Db | None = None,
) -> DownsampledSeries:
    """One field of a job reduced to about ``buckets`` entries for a chart.

    The x range is [start, end] (steps, or Unix seconds for the time axis), by default the
    job's whole range. ``minmax``: the range is cut into ``buckets`` equal slices
    (``core.downsample.BucketGrid``) and each gets the count, min, max and mean of its finite
    values and the count of its non-finite ones, all computed in PostgreSQL. ``lttb``: the
    finite values are read in x order and LTTB keeps ``buckets`` of them."""
    if method not in ("minmax", "lttb"):
        raise ValueError(f"method must be 'minmax' or 'lttb', got {method!r}")
    params = Params(None)  # $1: the job number, known below
    value = numeric_sql(field, params)
    result = DownsampledSeries(job_uuid, field, method, axis, 0)
    db = db or await default_pool()
    job = await _job_run(db, job_uuid, run, params)
    if job is None:
        return result
    job_no, sources, in_run = job.job_no, job.sources, job.in_run
    if start is None or end is None:
        lo, hi = await _x_range(db, job_no, axis, sources)
        if lo is None or hi is None:
            return result
        start = lo if start is None else start
        end = hi if end is None else end
    if axis == "step":
        first, last = math.ceil(start), math.floor(end)
        if first > last:
            return result
        grid = BucketGrid.for_steps(first, last, buckets)
        x = "m.step"
        in_range = f"m.step BETWEEN {params.add(first)} AND {params.add(last)}"
    else:
        if start > end:
            return result
        grid = BucketGrid.for_times(float(start), float(end), buckets)
        x = "date_part('epoch', m.ts)"
        in_range = f"m.ts BETWEEN {params.add(_epoch(start))} AND {params.add(_epoch(end))}"
    source = f"FROM metrics m WHERE m.job_no = $1 AND {in_range}{in_run}"
    if method == "minmax":
        bucket = bucket_sql(x, params.add(grid.lo), params.add(grid.span), params.add(grid.buckets))
        finite = f"v NOT IN {_NON_FINITE_SQL}"
        rows = await db.fetch(
            f"""
            SELECT b, count(*) AS n,
                   min(v) FILTER (WHERE {finite}) AS lo,
                   max(v) FILTER (WHERE {finite}) AS hi,
                   avg(v) FILTER (WHERE {finite}) AS mean,
                   count(*) FILTER (WHERE NOT {finite}) AS bad
            FROM (SELECT {bucket} AS b, {value} AS v {source}) q
            WHERE v IS NOT NULL
            GROUP BY b ORDER BY b
            """,
            *params.values,
        )
        for row in rows:
            i = row["b"]
            result.buckets.append(
                Bucket(
                    i,
                    grid.start(i),
                    grid.end(i),
                    row["n"],
                    row["lo"],
                    row["hi"],
                    row["mean"],
                    row["bad"],
                )
            )
        return dataclasses.replace(result, source_points=sum(b.count for b in result.buckets))
    rows = await db.fetch(
        f"""
        SELECT x, v FROM (SELECT {x}::float8 AS x, {value} AS v,
                                 m.step, m.ts, m.source_no, m.seq {source}) q
        WHERE v IS NOT NULL AND v NOT IN {_NON_FINITE_SQL}
        ORDER BY x, step, ts, source_no, seq
        """,
        *params.values,
    )
    xs = [r[0] for r in rows]
    ys = [r[1] for r in rows]
    result.points.extend((xs[i], ys[i]) for i in lttb(xs, ys, buckets))
    return dataclasses.replace(result, source_points=len(xs))


async def _x_range(db: Db, job_no: int, axis: Axis, sources: list[int] | None) -> tuple[Any, Any]:
    # min/max on an index's leading columns: two index probes for a job of one run.
    x = "m.step" if axis == "step" else "m.ts"
    params = Params(job_no)
    in_run = _in_run(sources, params)
    row = await db.fetchrow(
        f"SELECT min({x}) AS lo, max({x}) AS hi FROM metrics m WHERE m.job_no = $1{in_run}",
        *params.values,
    )
    if row is None or row["lo"] is None:
        return None, None
    if axis == "step":
        return row["lo"], row["hi"]
    return row["lo"].timestamp(), row["hi"].timestamp()


# --- the default pool ---------------------------------------------------------------------

_POOLS: dict[tuple[str, int], asyncpg.Pool] = {}
_POOL_LOCK: dict[int, asyncio.Lock] = {}


async def default_pool() -> asyncpg.Pool:
    """A pool on ``DATABASE_URL`` for the running event loop, opened on first use."""
    loop = asyncio.get_running_loop()
    key = (database_url(), id(loop))
    pool = _POOLS.get(key)
    if pool is not None:
        return pool
    lock = _POOL_LOCK.setdefault(id(loop), asyncio.Lock())
    async with lock:
        pool = _POOLS.get(key)
        if pool is None:
            pool = await asyncpg.create_pool(key[0], min_size=1, max_size=4)
            _POOLS[key] = pool
    return pool


async def close_default_pool() -> None:
    """Close the default pool of the running event loop."""
    loop_id = id(asyncio.get_running_loop())
    for key in [k for k in _POOLS if k[1] == loop_id]:
        await _POOLS.pop(key).close()


async def get_metric_series(
    job_uuid: str,
    fields: Sequence[str],
    *,
    points: int = 500,
    step_from: int | None = None,
    step_to: int | None = None,
    run: Run = None,
    db: Db | None = None,
) -> dict[str, Any]:
    """Chosen fields of a job's run (the latest unless ``run`` says) for a chart, in at most
    ``points`` buckets of equal step width (``core.downsample.BucketGrid``; one bucket per step
    when there are fewer steps), computed in PostgreSQL. Per bucket: its first step with a
    value, and per field the mean of its finite values (None when it has none). A field's
    non-finite values are never averaged in: the steps where it was NaN or infinite are listed
    under ``non_finite``.

    ``{"job_uuid", "fields", "step": [...], "values": {field: [...]}, "non_finite":
    {field: [step, ...]}}``; an unknown field raises ``UnknownField``."""
    if points < 1:
        raise ValueError(f"points must be at least 1, got {points}")
    chosen = tuple(dict.fromkeys(fields))
    if not chosen:
        raise UnknownField("name at least one field")
    params = Params(None)  # $1: the job number, known below
    exprs = [numeric_sql(name, params) for name in chosen]
    result: dict[str, Any] = {
        "job_uuid": job_uuid,
        "fields": list(chosen),
        "step": [],
        "values": {name: [] for name in chosen},
        "non_finite": {name: [] for name in chosen},
    }
    db = db or await default_pool()
    job = await _job_run(db, job_uuid, run, params)
    if job is None:
        return result
    job_no, sources, in_run = job.job_no, job.sources, job.in_run
    lo, hi = step_from, step_to
    if lo is None or hi is None:
        first, last = await _x_range(db, job_no, "step", sources)
        if first is None or last is None:
            return result
        lo = first if lo is None else lo
        hi = last if hi is None else hi
    if lo > hi:
        return result
    grid = BucketGrid.for_steps(lo, hi, points)
    bucket = bucket_sql(
        "m.step", params.add(grid.lo), params.add(grid.span), params.add(grid.buckets)
    )
    in_range = f"m.step BETWEEN {params.add(lo)} AND {params.add(hi)}"
    inner = ", ".join(f"{e} AS v{i}" for i, e in enumerate(exprs))
    present = " OR ".join(f"v{i} IS NOT NULL" for i in range(len(exprs)))
    aggregates = ", ".join(
        f"avg(v{i}) FILTER (WHERE v{i} NOT IN {_NON_FINITE_SQL}) AS f{i}, "
        f"array_agg(DISTINCT step) FILTER (WHERE v{i} IN {_NON_FINITE_SQL}) AS bad{i}"
        for i in range(len(exprs))
    )
    rows = await db.fetch(
        f"""
        SELECT b, min(step) AS step, {aggregates}
        FROM (SELECT {bucket} AS b, m.step, {inner}
              FROM metrics m WHERE m.job_no = $1 AND {in_range}{in_run}) q
        WHERE {present}
        GROUP BY b ORDER BY b
        """,
        *params.values,
    )
    for row in rows:
        result["step"].append(row["step"])
        for i, name in enumerate(chosen):
            result["values"][name].append(row[f"f{i}"])
            if row[f"bad{i}"]:
                result["non_finite"][name].extend(sorted(row[f"bad{i}"]))
    return result
