"""Rows: every field has a column, NaN stays NaN, and what PostgreSQL would refuse is refused
here first (so that one bad message never fails a whole COPY)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from posttrain.events.messages.metrics import CORE_FIELDS, MetricPoint
from posttrain.metrics_ingest.core.rows import (
    ROW_COLUMNS,
    TABLE_COLUMNS,
    RowError,
    check_routing,
    custom_json,
    point_row,
)

MIGRATION = (
    Path(__file__).parents[3]
    / "services/metrics_ingest/posttrain/metrics_ingest/migrations/0001_metrics.sql"
)


def _metrics_table_columns() -> list[str]:
    sql = MIGRATION.read_text()
    body = re.search(r"CREATE TABLE metrics \((.*?)\) PARTITION BY", sql, re.S)
    assert body is not None
    return [line.split()[0] for line in body.group(1).strip().splitlines() if line.strip()]


def test_the_migration_has_a_column_for_every_field_in_row_order() -> None:
    assert _metrics_table_columns() == list(TABLE_COLUMNS)
    assert set(CORE_FIELDS) <= set(TABLE_COLUMNS)
    # Every MetricPoint field is stored: coordinates, canonical fields and custom.
    assert set(MetricPoint.model_fields) - {"timestamp"} <= set(ROW_COLUMNS)


def test_a_row_keeps_every_value_and_nan_stays_nan() -> None:
    values = [float(i) for i in range(len(CORE_FIELDS))]
    values[0] = math.nan
    values[1] = math.inf
    values[2] = None
    row = point_row(7, 42, 0.5, 1767225600.25, values, {"extra": [1, "two"]})
    assert row[:3] == (7, 42, 0.5)
    # timestamptz as PostgreSQL keeps it: microseconds since 2000-01-01 UTC.
    stored_time = datetime(2000, 1, 1, tzinfo=UTC) + timedelta(microseconds=row[3])
    assert stored_time == datetime(2026, 1, 1, 0, 0, 0, 250000, tzinfo=UTC)
    stored = row[4 : 4 + len(CORE_FIELDS)]
    assert math.isnan(stored[0]) and stored[1] == math.inf and stored[2] is None
    assert list(stored[3:]) == values[3:]
    assert orjson.loads(row[-1][1:]) == {"extra": [1, "two"]}


def test_an_empty_custom_is_null_and_non_finite_custom_values_become_strings() -> None:
    assert custom_json({}) is None
    text = custom_json({"a": math.nan, "b": [math.inf, -math.inf], "c": None})
    assert text is not None and text[:1] == b"\x01"  # jsonb's binary format: version 1
    assert orjson.loads(text[1:]) == {"a": "NaN", "b": ["Infinity", "-Infinity"], "c": None}


@pytest.mark.parametrize(
    ("seq", "step", "timestamp", "custom", "why"),
    [
        (2**63, 1, 1.0, {}, "seq"),
        (1, -(2**63) - 1, 1.0, {}, "step"),
        (1, 1, 1e20, {}, "timestamp"),
        (1, 1, 253402300800.0, {}, "timestamp"),
        (1, 1, math.nan, {}, "timestamp"),
        (1, 1, 1.0, {"k": "a\x00b"}, "NUL"),
        (1, 1, 1.0, {"k": object()}, "not JSON"),
    ],
)
def test_values_postgresql_would_refuse_are_refused_with_a_reason(
    seq: int, step: int, timestamp: float, custom: dict[str, object], why: str
) -> None:
    with pytest.raises(RowError, match=why) as info:
        point_row(seq, step, None, timestamp, [None] * len(CORE_FIELDS), custom)
    assert info.value.reason == "unstorable"


@pytest.mark.parametrize(
    ("job", "source", "attempt", "why"),
    [
        ("", "s", None, "empty"),
        ("j\x00", "s", None, "NUL"),
        ("j", "\ud800", None, "UTF-8"),
        ("j", "s", 2**40, "attempt"),
    ],
)
def test_routing_postgresql_would_refuse_is_refused(
    job: str, source: str, attempt: int | None, why: str
) -> None:
    with pytest.raises(RowError, match=why):
        check_routing(job, source, None, None, attempt)
