"""Reading JSONL lines: split complete lines off a chunk, parse one metric line, read one line
of a file between the agent and its stage process (control.jsonl, events.jsonl)."""

from __future__ import annotations

import json
from typing import Any

import orjson

from posttrain.events.codec import DecodeError, decode
from posttrain.events.messages import Message, MetricPoint
from posttrain.trainer_agent.core.fields import point_from_record


def complete_lines(chunk: bytes) -> tuple[list[bytes], int]:
    """The complete lines of ``chunk`` (without their newline) and how many bytes they span.

    Bytes after the last newline are a line still being written: not consumed."""
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], 0
    return chunk[:end].split(b"\n"), end + 1


def is_message(line: dict[str, Any]) -> bool:
    """A line as the codec writes a message (type, version, data), not a bare older line."""
    return isinstance(line.get("data"), dict) and "version" in line


def line_message(line: dict[str, Any]) -> Message | None:
    """The message a codec-encoded line holds (upcast and validated); None for a bare line or
    one no reader can make sense of."""
    if not is_message(line):
        return None
    try:
        message: Message = decode(orjson.dumps(line)).data
    except DecodeError:
        return None
    return message


def line_fields(line: dict[str, Any]) -> dict[str, Any] | None:
    """A line of a stage file as ``{"type": ..., fields}``: a codec-encoded message decoded, a
    bare line from an older writer as it is; None when a codec line cannot be read."""
    if not is_message(line):
        return line
    message = line_message(line)
    return None if message is None else {"type": message.TYPE, **message.model_dump(mode="json")}


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
