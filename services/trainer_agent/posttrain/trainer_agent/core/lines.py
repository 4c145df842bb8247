"""Reading one line of a file between the agent and its stage process (control.jsonl,
events.jsonl): a codec-encoded message, or a bare line of an older writer. (Metric lines are
``posttrain.events.metricfile``'s.)"""

from __future__ import annotations

from typing import Any

import orjson

from posttrain.events.codec import DecodeError, decode
from posttrain.events.messages import Message


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
