"""``MetricsReported`` messages -> rows: a fast reader, and the contract's way.

The contract's way (``posttrain.events.decode`` then ``rows_from_message``) builds a pydantic
model per point: about 10 us a point, a whole core at 100,000 points/s. ``read_report`` decodes
the same bytes with msgspec into structs generated from the contract's own field lists, at a
fifth of the cost. It is strict where pydantic is lax: it only vouches for messages in their
plainest form (the current version, each value of exactly its JSON type); for anything else
(a "NaN" string, a step written 3.0, a value PostgreSQL would refuse) it answers None, and the
caller goes the contract's way, which either produces the same rows or says why the message is
unreadable. So the fast reader never accepts a message that the contract would refuse, nor
reads one differently (the unit tests check both on generated messages).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

import msgspec
import orjson

from posttrain.events.messages.metrics import CORE_FIELDS, MetricPoint, MetricsReported
from posttrain.metrics_ingest.core.rows import (
    INT8_MAX,
    INT8_MIN,
    JSONB_VERSION,
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

# The wire shapes, generated from the contract's field lists (a field added to MetricPoint
# without being added here fails a unit test). Field order is the row's order. Two variants:
# the usual one, where every value is a number or null, and one that also takes the strings
# pydantic writes for non-finite floats, tried when the first refuses a message (so a run whose
# loss went NaN is still ingested on the fast path).
POINT_FIELDS: tuple[str, ...] = ("step", "epoch", "timestamp", *CORE_FIELDS, "custom")
REPORT_FIELDS: tuple[str, ...] = (
    "job_id",
    "source",
    "first_seq",
    "points",
    "pipeline_id",
    "stage",
    "attempt",
)
_NON_FINITE: dict[str, float] = {
    "NaN": float("nan"),
    "Infinity": float("inf"),
    "-Infinity": float("-inf"),
}
_NonFinite = Literal["NaN", "Infinity", "-Infinity"]


def _decoder(value_type: Any) -> Any:
    point = msgspec.defstruct(
        "_Point",
        [
            ("step", int),
            ("epoch", value_type, None),
            ("timestamp", float),
            *((name, value_type, None) for name in CORE_FIELDS),
            ("custom", dict[str, Any], msgspec.field(default_factory=dict)),
        ],
        kw_only=True,
        gc=False,  # points hold no cycles: keep them out of the collector's way
    )
    report = msgspec.defstruct(
        "_Report",
        [
            ("job_id", str),
            ("source", str),
            ("first_seq", int),
            ("points", list[point]),  # type: ignore[valid-type]
            ("pipeline_id", str | None, None),
            ("stage", str | None, None),
            ("attempt", int | None, None),
        ],
        kw_only=True,
    )
    envelope = msgspec.defstruct(
        "_Envelope",
        [
            ("id", str),
            ("type", str),
            ("version", int),
            ("occurred_at", str),
            ("key", str),
            ("data", report),
        ],
        kw_only=True,
    )
    return msgspec.json.Decoder(envelope).decode


_decode_plain = _decoder(float | None)
_decode_non_finite = _decoder(float | None | _NonFinite)
_astuple = msgspec.structs.astuple
_dumps = orjson.dumps


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
    non_finite = False
    try:
        envelope: Any = _decode_plain(value)
    except msgspec.ValidationError:
        # Most likely a "NaN"-style string (a run that diverged): read it as such.
        non_finite = True
        try:
            envelope = _decode_non_finite(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
    except msgspec.DecodeError:
        return None
    if envelope.type != TYPE_NAME or envelope.version != VERSION:
        return None  # older versions are upcast by the contract
    try:
        datetime.fromisoformat(envelope.occurred_at)
        return _rows(envelope.data, non_finite)
    except (ValueError, TypeError, RowError):  # TypeError: orjson refused a custom value
        return None


def _finite(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """The strings "NaN"/"Infinity"/"-Infinity" as floats (custom, last, is left as it is)."""
    *fields, custom = values
    return (*(_NON_FINITE[v] if type(v) is str else v for v in fields), custom)


def _rows(report: Any, non_finite: bool) -> ReportRows:
    first_seq = report.first_seq
    points = report.points
    check_routing(report.job_id, report.source, report.pipeline_id, report.stage, report.attempt)
    check_int8(first_seq, "seq")
    check_int8(first_seq + max(0, len(points) - 1), "seq")
    rows: list[Row] = []
    append = rows.append
    seq = first_seq
    for point in points:
        # (step, epoch, timestamp, *canonical fields, custom), types already checked.
        values = _astuple(point)
        if non_finite:
            values = _finite(values)
        step = values[0]
        timestamp = values[2]
        if not INT8_MIN <= step <= INT8_MAX:
            raise RowError("step out of range")
        if not MIN_TIMESTAMP <= timestamp < MAX_TIMESTAMP:
            raise RowError("timestamp out of range")
        custom = values[-1]
        if custom:
            # rows.custom_json, with its usual case inline: no null to look into, no NUL.
            text = _dumps(custom)
            jsonb = (
                custom_json(custom)
                if b"null" in text or b"\\u0000" in text
                else JSONB_VERSION + text
            )
        else:
            jsonb = None
        append(
            (
                seq,
                step,
                values[1],
                round(timestamp * 1_000_000) - PG_EPOCH_US,  # as rows.timestamp_us
                *values[3:-1],
                jsonb,
            )
        )
        seq += 1
    return ReportRows(
        report.job_id, report.source, rows, report.pipeline_id, report.stage, report.attempt
    )
