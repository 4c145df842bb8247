"""Reading JSONL metric lines: split complete lines off a chunk, parse one line."""

from __future__ import annotations

import json
from typing import Any

import orjson

from posttrain.events.messages import MetricPoint
from posttrain.trainer_agent.core.fields import point_from_record


def complete_lines(chunk: bytes) -> tuple[list[bytes], int]:
    """The complete lines of ``chunk`` (without their newline) and how many bytes they span.

    Bytes after the last newline are a line still being written: not consumed."""
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], 0
    return chunk[:end].split(b"\n"), end + 1


def parse_line(line: bytes, default_timestamp: float) -> MetricPoint | None:
    """A point from one line of the project's format or verl's, or None if it is not one."""
    text = line.strip()
    if not text:
        return None
    record: Any
    try:
        record = orjson.loads(text)
    except orjson.JSONDecodeError:
        # Python's json writes NaN/Infinity bare (verl's logger does): only json reads them.
        try:
            record = json.loads(text)
        except ValueError:
            return None
    if not isinstance(record, dict):
        return None
    try:
        return point_from_record(record, default_timestamp)
    except ValueError:
        return None
