"""Rows of the ``metrics`` table, built from points, with every check that COPY would otherwise
fail on.

A batch is written with one COPY: a single value PostgreSQL refuses (a NUL character, a step
beyond bigint, a timestamp past year 9999) would fail the whole batch, and with it every good
point around it. So whatever PostgreSQL could refuse is refused here first, per message, and
the message goes to the dead-letter topic instead (``RowError``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import orjson

from posttrain.events.messages.metrics import CORE_FIELDS
from posttrain.events.nonfinite import as_text, has_non_finite

# The identity of a point is (job, source, seq); job and source are stored as small integers
# (``metric_jobs``, ``metric_sources``) that the writer prepends to every row.
ID_COLUMNS: tuple[str, ...] = ("job_no", "source_no")
ROW_COLUMNS: tuple[str, ...] = ("seq", "step", "epoch", "ts", *CORE_FIELDS, "custom")
TABLE_COLUMNS: tuple[str, ...] = (*ID_COLUMNS, *ROW_COLUMNS)

# A row as the core builds it, in ROW_COLUMNS order (the ids are prepended at write time).
Row = tuple[Any, ...]

INT8_MIN = -(2**63)
INT8_MAX = 2**63 - 1
INT4_MAX = 2**31 - 1


class RowError(ValueError):
    """A point, or a message, that PostgreSQL would refuse. ``reason`` goes to the DLQ header."""

    reason = "unstorable"


class ReportRows(NamedTuple):
    """The rows of one ``MetricsReported`` message, and where they are routed."""

    job_id: str
    source: str
    rows: list[Row]
    pipeline_id: str | None = None
    stage: str | None = None
    attempt: int | None = None


def check_text(value: str, what: str) -> str:
    """PostgreSQL text holds neither NUL nor unpaired surrogates (not valid UTF-8)."""
    if "\x00" in value:
        raise RowError(f"{what} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RowError(f"{what} is not valid UTF-8 text") from None
    return value


def check_int8(value: int, what: str) -> int:
    if not INT8_MIN <= value <= INT8_MAX:
        raise RowError(f"{what} {value} is outside the 64-bit integer range")
    return value


# timestamptz as PostgreSQL stores it: microseconds since 2000-01-01 UTC. Rows carry that
# integer and the writer's connection sends it as is (``store.prepare_connection``): building a
# datetime per point and having the driver take it apart again cost more than the rest of the
# row.
PG_EPOCH_US = 946_684_800_000_000
# Times a datetime can hold (years 1 to 9999), so that every stored time reads back in Python.
MIN_TIMESTAMP = -62_135_596_800.0
MAX_TIMESTAMP = 253_402_300_800.0


def timestamp_us(seconds: float) -> int:
    """A point's Unix time as stored: to the nearest microsecond, since 2000-01-01 UTC."""
    if not MIN_TIMESTAMP <= seconds < MAX_TIMESTAMP:  # NaN fails too
        raise RowError(f"timestamp {seconds!r} is not a representable time")
    return round(seconds * 1_000_000) - PG_EPOCH_US


# jsonb as PostgreSQL's binary protocol carries it: a version byte, then the JSON text. Rows
# carry these bytes and the writer's connection sends them as they are
# (``store.prepare_connection``), which saves decoding orjson's bytes to str and the driver
# encoding them back.
JSONB_VERSION = b"\x01"


def custom_json(custom: Mapping[str, Any]) -> bytes | None:
    """The jsonb value of ``custom`` (``JSONB_VERSION`` + JSON text); None (SQL NULL) when
    empty, which costs PostgreSQL nothing to parse. Non-finite floats become the strings
    "NaN"/"Infinity"/"-Infinity", as on the wire: JSON has no other way to say them."""
    if not custom:
        return None
    try:
        text = orjson.dumps(custom)
    except TypeError:
        raise RowError("custom holds a value that is not JSON") from None
    # orjson writes NaN and infinities as null; a genuine null is fine too, so only re-encode
    # when a float is not finite.
    if b"null" in text and has_non_finite(custom):
        text = orjson.dumps(as_text(custom))
    if b"\\u0000" in text:
        raise RowError("custom contains a NUL character, which JSONB cannot store")
    return JSONB_VERSION + text


def point_row(
    seq: int,
    step: int,
    epoch: float | None,
    timestamp: float,
    values: Sequence[float | None],
    custom: Mapping[str, Any],
) -> Row:
    """One row in ROW_COLUMNS order; ``values`` follow CORE_FIELDS."""
    return (
        check_int8(seq, "seq"),
        check_int8(step, "step"),
        epoch,
        timestamp_us(timestamp),
        *values,
        custom_json(custom),
    )


def check_routing(
    job_id: str, source: str, pipeline_id: str | None, stage: str | None, attempt: int | None
) -> None:
    """The per-message strings and numbers that go to ``metric_jobs``/``metric_sources``."""
    check_text(job_id, "job_id")
    check_text(source, "source")
    if not job_id:
        raise RowError("job_id is empty")
    if pipeline_id is not None:
        check_text(pipeline_id, "pipeline_id")
    if stage is not None:
        check_text(stage, "stage")
    if attempt is not None and not -INT4_MAX <= attempt <= INT4_MAX:
        raise RowError(f"attempt {attempt} is outside the 32-bit integer range")
