"""``MetricsReported`` messages -> rows: a fast reader, and the contract's way.

The contract's way (``posttrain.events.decode`` then ``rows_from_message``) builds a pydantic
model per point: about 10 us a point, a whole core at 100,000 points/s. ``read_report`` reads
the same bytes with orjson and checks every value's type itself, at a third of the cost. It only
vouches for messages in their plainest form (current version, exact JSON types, the non-finite
strings pydantic writes); for anything else it answers None, and the caller goes the contract's
way, which either produces the same rows or says why the message is unreadable. So the fast
reader never accepts a message that the contract would refuse, nor reads one differently (the
unit tests check both on generated messages).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from operator import itemgetter
from typing import Any

import orjson

from posttrain.events.messages.metrics import CORE_FIELDS, MetricPoint, MetricsReported
from posttrain.metrics_ingest.core.rows import (
    INT8_MAX,
    INT8_MIN,
    MAX_TIMESTAMP,
    MIN_TIMESTAMP,
    PG_EPOCH_US,
    ReportRows,
    Row,
    RowError,
    check_int8,
    check_routing,
    custom_json,
    point_row,
)

TYPE_NAME = MetricsReported.TYPE
VERSION = MetricsReported.VERSION

_NON_FINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
_FLOAT = float
_INT = int


def rows_from_message(message: MetricsReported) -> ReportRows:
    """The rows of a decoded message; ``RowError`` if PostgreSQL could not store one of them."""
    numbered = enumerate(message.points, start=message.first_seq)
    return rows_from_points(
        message.job_id,
        message.source,
        numbered,
        pipeline_id=message.pipeline_id,
        stage=message.stage,
        attempt=message.attempt,
    )


def rows_from_points(
    job_id: str,
    source: str,
    numbered_points: Iterable[tuple[int, MetricPoint]],
    *,
    pipeline_id: str | None = None,
    stage: str | None = None,
    attempt: int | None = None,
) -> ReportRows:
    """The rows of points given with their seq; ``RowError`` if one could not be stored."""
    check_routing(job_id, source, pipeline_id, stage, attempt)
    rows: list[Row] = []
    for seq, point in numbered_points:
        values = [getattr(point, field) for field in CORE_FIELDS]
        rows.append(point_row(seq, point.step, point.epoch, point.timestamp, values, point.custom))
    return ReportRows(job_id, source, rows, pipeline_id, stage, attempt)


def read_report(value: bytes | None) -> ReportRows | None:
    """The rows of an encoded envelope holding a current ``MetricsReported``, or None when the
    fast reader cannot vouch for the message (go the contract's way then)."""
    if value is None:
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is not dict:
        return None
    if doc.get("type") != TYPE_NAME or type(doc.get("version")) is not _INT:
        return None
    if doc["version"] != VERSION:
        return None  # older versions are upcast by the contract
    if type(doc.get("id")) is not str or type(doc.get("key")) is not str:
        return None
    occurred_at = doc.get("occurred_at")
    if type(occurred_at) is not str:
        return None
    try:
        datetime.fromisoformat(occurred_at)
    except ValueError:
        return None
    data = doc.get("data")
    if type(data) is not dict:
        return None
    try:
        return _read_data(data)
    except (_NotPlain, RowError):
        return None


class _NotPlain(Exception):
    """A value the fast reader does not vouch for."""


def _opt_str(value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    raise _NotPlain


def _read_data(data: dict[str, Any]) -> ReportRows:
    job_id = data.get("job_id")
    source = data.get("source")
    first_seq = data.get("first_seq")
    points = data.get("points")
    if type(job_id) is not str or type(source) is not str or type(first_seq) is not _INT:
        raise _NotPlain
    if type(points) is not list:
        raise _NotPlain
    pipeline_id = _opt_str(data.get("pipeline_id"))
    stage = _opt_str(data.get("stage"))
    attempt = data.get("attempt")
    if attempt is not None and type(attempt) is not _INT:
        raise _NotPlain
    check_routing(job_id, source, pipeline_id, stage, attempt)
    check_int8(first_seq, "seq")
    check_int8(first_seq + max(0, len(points) - 1), "seq")
    # The hot loop, per point: one C-level get of every field and one type check for the usual
    # case (step an int, the rest floats or nulls, custom a dict); anything else goes value by
    # value, or steps aside.
    rows: list[Row] = []
    append = rows.append
    seq = first_seq
    for point in points:
        if type(point) is not dict:
            raise _NotPlain
        try:
            values = _GETTER(point)
        except KeyError:  # a writer that leaves nulls (or custom) out
            values = tuple(map(point.get, _FIELDS))
        step = values[0]
        timestamp = values[2]
        if (
            type(step) is not _INT
            or type(timestamp) is not _FLOAT
            or not _FLOAT_OR_NONE.issuperset(map(type, values[1:-1]))
        ):
            values = _convert(values)
            step = values[0]
            timestamp = values[2]
        if not INT8_MIN <= step <= INT8_MAX:
            raise _NotPlain
        custom = values[-1]
        if custom is None:
            custom = _EMPTY if "custom" not in point else None
        if type(custom) is not dict:
            raise _NotPlain
        if not MIN_TIMESTAMP <= timestamp < MAX_TIMESTAMP:
            raise _NotPlain
        ts = round(timestamp * 1_000_000) - PG_EPOCH_US  # as rows.timestamp_us
        append((seq, step, values[1], ts, *values[3:-1], custom_json(custom) if custom else None))
        seq += 1
    return ReportRows(job_id, source, rows, pipeline_id, stage, attempt)


# step, epoch, timestamp, the canonical fields, custom: the row's order, less seq and ts.
_FIELDS = ("step", "epoch", "timestamp", *CORE_FIELDS, "custom")
_GETTER = itemgetter(*_FIELDS)
_FLOAT_OR_NONE = frozenset({float, type(None)})
_EMPTY: dict[str, Any] = {}


def _number(value: Any) -> float | None:
    kind = type(value)
    if kind is _FLOAT:
        return value  # type: ignore[no-any-return]
    if kind is _INT:
        return _FLOAT(value)
    if value is None:
        return None
    if kind is str:
        number = _NON_FINITE.get(value)
        if number is not None:
            return number
    raise _NotPlain


def _convert(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """The unusual case, value by value: integers to floats, "NaN"-style strings to floats."""
    step = values[0]
    if type(step) is not _INT:
        raise _NotPlain
    timestamp = _number(values[2])
    if timestamp is None:
        raise _NotPlain
    middle = tuple(_number(v) for v in values[3:-1])
    return (step, _number(values[1]), timestamp, *middle, values[-1])
