"""``MetricsReported`` messages -> rows: a fast reader, and the contract's way.

The contract's way (``posttrain.events.decode`` then ``rows_from_message``) builds a pydantic
model per point: about 10 us a point, a whole core at 100,000 points/s. ``read_report`` reads
the same bytes with the contract's own fast reader (``posttrain.events.views``: msgspec structs
derived from the models, non-finite strings read as floats there), at a fifth of the cost. It
is strict where pydantic is lax: it only vouches for messages in their plainest form (the
current version, each value of exactly its JSON type); for anything else (a step written 3.0,
a value PostgreSQL would refuse) it answers None, and the caller goes the contract's way, which
either produces the same rows or says why the message is unreadable. So the fast reader never
accepts a message that the contract would refuse, nor reads one differently (the unit tests
check both on generated messages).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
import orjson

from posttrain.events.messages.metrics import CORE_FIELDS, MetricPoint, MetricsReported
from posttrain.events.views import ViewDecoder
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

# A row takes a point view's values by position: the view's fields are the model's, in this
# order (a unit test holds the two together).
POINT_FIELDS: tuple[str, ...] = ("step", "epoch", "timestamp", *CORE_FIELDS, "custom")
# The contract's one fast reader, for this one type (other types are no concern of the ingest).
_read_view = ViewDecoder(types={MetricsReported.TYPE: MetricsReported}).view
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
    envelope = _read_view(value)
    if envelope is None:
        return None
    try:
        return _rows(envelope.data)
    except (TypeError, RowError):  # TypeError: orjson refused a custom value
        return None


def _rows(report: Any) -> ReportRows:
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
