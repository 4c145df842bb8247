"""The JSONL metric file (SEED.md section 2, mode B) -> points with a permanent identity.

The file is what ``create_metrics_file_writer`` writes: one JSON object per line, the point's
fields at the top level next to ``job_id``::

    {"job_id": "job-42", "step": 12, "epoch": 0.5, "timestamp": 1767225600.25, "loss": 0.42,
     "custom": {"my_metric": 7}}

Lines that are plain ``MetricPoint`` objects (no ``job_id``) and verl's file logger lines
(``{"step": n, "data": {...}}``) are read too. A name that is not a canonical field is kept
under ``custom``: nothing in the file is dropped. Non-finite values may be the strings "NaN",
"Infinity", "-Infinity" or Python's bare NaN/Infinity.

Identity: a line's point is ``(job, source, seq)`` with source ``file:<file name>`` and seq the
line's number (from 0, blank and unreadable lines counted), so syncing a file again, or after
more lines were appended, finds the same identities and adds only the new points. A last line
without its newline may still be being written: it is read only if it parses whole.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from posttrain.events.messages.metrics import CORE_FIELDS, MetricPoint

SOURCE_PREFIX = "file:"
_COORDINATES = frozenset({"step", "epoch", "timestamp"})
_NOT_METRICS = _COORDINATES | {"job_id", "custom"}
_CORE = frozenset(CORE_FIELDS)
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def file_source(file_name: str) -> str:
    return f"{SOURCE_PREFIX}{file_name}"


class LineError(ValueError):
    """A line that holds no point; the message says why."""


@dataclass(frozen=True, slots=True)
class FileLine:
    """Line ``number`` (from 0): its point, or why it has none."""

    number: int
    point: MetricPoint | None
    error: str | None = None


def read_lines(lines: Iterable[bytes], job_id: str, default_timestamp: float) -> Iterator[FileLine]:
    """Every non-blank line (as a file iterates them, newline included) with its point or its
    error, numbered from 0."""
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        finished = line.endswith(b"\n")
        try:
            point = parse_line(line, job_id, default_timestamp)
        except LineError as exc:
            if not finished:
                return  # the last line, still being written: read it on the next sync
            yield FileLine(number, None, str(exc))
            continue
        yield FileLine(number, point)


def parse_line(line: bytes, job_id: str, default_timestamp: float) -> MetricPoint:
    record = _json(line)
    if not isinstance(record, dict):
        raise LineError(f"expected a JSON object, got {type(record).__name__}")
    line_job = record.get("job_id")
    if line_job is not None and line_job != job_id:
        raise LineError(f"line is for job {line_job!r}, not {job_id!r}")
    data = record.get("data")
    if isinstance(data, dict) and not _CORE.intersection(record):
        # verl's file logger: everything but the step sits under "data".
        record = {**data, "step": record.get("step", data.get("step"))}
    return point_from_record(record, default_timestamp)


def _json(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    # Python's json writes NaN/Infinity bare; only json reads them back.
    try:
        return json.loads(line)
    except ValueError as exc:
        raise LineError(f"not JSON: {exc}") from None


def point_from_record(record: Mapping[str, Any], default_timestamp: float) -> MetricPoint:
    """A point from a flat record of canonical fields; other names go under ``custom``."""
    step = record.get("step")
    if isinstance(step, float) and step.is_integer():
        step = int(step)
    if isinstance(step, bool) or not isinstance(step, int):
        raise LineError(f"'step' must be an integer, got {step!r}")
    timestamp = _number(record.get("timestamp"))
    fields: dict[str, Any] = {
        "step": step,
        "epoch": _number(record.get("epoch")),
        "timestamp": default_timestamp if timestamp is None else timestamp,
    }
    custom: dict[str, Any] = {}
    nested = record.get("custom")
    if isinstance(nested, Mapping):
        custom.update(nested)
    elif nested is not None:
        custom["custom"] = nested
    for name, value in record.items():
        if name in _NOT_METRICS:
            continue
        number = _number(value) if name in _CORE else None
        if number is not None:
            fields[name] = number
        else:
            custom[name] = value
    try:
        return MetricPoint(**fields, custom=custom)
    except ValidationError as exc:
        raise LineError(f"not a metric point: {exc.errors()[0]['msg']}") from None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return _NON_FINITE.get(value)
    return None
