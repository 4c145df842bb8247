"""The files through which the agent and a stage process talk.

Each RunStage command has a directory on the agent's disk::

    spec-<n>.json     what launch n runs (the RunStage, where to resume, control offset)
    stage.log         stdout and stderr of every launch of this attempt, appended
    control.jsonl     control commands, appended by the agent as codec-encoded messages, read
                      at each step boundary
    events.jsonl      CheckpointSaved / ActionApplied / ActionRefused, appended by the stage
                      as codec-encoded messages (``append_message``), published by the agent
    result-<n>.json   how launch n ended (a codec-encoded LaunchEnded), written once,
                      atomically; an older stage's plain dict is still read
    result-<n>.rank<r>.json   how rank r of a multi-rank launch failed (``rank_launch``), the same

Files rather than pipes, because the stage process outlives an agent that is killed: the next
agent finds the same files, re-attaches and carries on, and nothing held only in memory is lost.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from posttrain.events import Envelope
from posttrain.events.codec import DecodeError, decode, encode, encode_written
from posttrain.events.messages import (
    ActionApplied,
    ActionRefused,
    CheckpointSaved,
    Message,
    RunStage,
)
from posttrain.events.messages.launch import LAUNCH_TYPES, LaunchEnded
from posttrain.events.metricfile import complete_lines
from posttrain.trainer_agent.core.control import StepDirective, at_step_boundary
from posttrain.trainer_agent.core.failure import tail
from posttrain.trainer_agent.core.lines import is_message, line_fields

CONTROL = "control.jsonl"
EVENTS = "events.jsonl"
LOG = "stage.log"
_TAIL_BYTES = 16384


def spec_path(attempt_dir: Path, launch: int) -> Path:
    return attempt_dir / f"spec-{launch}.json"


def result_path(attempt_dir: Path, launch: int) -> Path:
    return attempt_dir / f"result-{launch}.json"


def write_json_atomic(path: Path, doc: Any) -> None:
    """Write, flush to disk, then rename: a reader sees the old file or the whole new one."""
    _write_atomic(path, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def launch_ended(result: Mapping[str, Any]) -> LaunchEnded:
    """A launch's result (one of the shapes ``stage_process`` builds) as its message. Through
    orjson first: a task's outputs may hold numpy numbers, which a result has always written as
    plain numbers (and NaN as null)."""
    plain = orjson.loads(orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY))
    return LaunchEnded.model_validate(plain)


def write_result(path: Path, result: Mapping[str, Any], key: str) -> None:
    """Write a launch's result as a codec-encoded LaunchEnded, atomically. Only the fields the
    result has are written (see ``LaunchEnded``), so that ``read_result`` gives back the same
    dict."""
    message = launch_ended(result)
    data = message.model_dump_json(exclude_unset=True).encode()
    _, value, _ = encode_written(LaunchEnded, data, key=key)
    _write_atomic(path, value)


def read_result(path: Path) -> dict[str, Any] | None:
    """A launch's result as the dict the agent's core decides on (``Looked.result``): a
    LaunchEnded decoded (upcast and validated), or the plain dict an older stage process wrote,
    as it is. None while there is none; one that cannot be read is a failure saying why, not a
    result that never comes."""
    try:
        raw = path.read_bytes()
        doc = orjson.loads(raw)
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    if not is_message(doc):
        return doc
    try:
        message = decode(raw, types=LAUNCH_TYPES).data
    except DecodeError as exc:
        return {
            "status": "failed",
            "kind": "error",
            "error": f"{path.name} cannot be read: {exc}",
            "details": {},
        }
    fields: dict[str, Any] = message.model_dump(mode="json", exclude_unset=True)
    return fields


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None


def append_line(path: Path, doc: Any) -> int:
    """Append one JSON line (one write, flushed); returns the file's size after it."""
    line = orjson.dumps(doc) + b"\n"
    with open(path, "ab") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())
        return fh.tell()


def append_message(path: Path, message: Message, key: str) -> int:
    """Append one message as the codec writes it to Kafka (type, version and data in one JSON
    line), so that its reader upcasts and validates it like any other; returns the file's
    size after it."""
    _, value, _ = encode(Envelope.create(message, key=key))
    with open(path, "ab") as fh:
        fh.write(value + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
        return fh.tell()


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def read_tail(path: Path, since: int | None = None) -> str:
    """The end of a log (``core.failure.tail``) of what it gained past ``since`` (by default,
    of its last 16 KiB): what a failure quotes."""
    start = max(0, file_size(path) - _TAIL_BYTES) if since is None else since
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            return tail(fh.read().decode("utf-8", "replace"))
    except FileNotFoundError:
        return ""


class LineFollower:
    """Reads the complete lines appended to a file since the last read."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset
        self.lines_read = 0

    def changed(self) -> bool:
        return file_size(self.path) > self.offset

    def read(self) -> list[dict[str, Any]]:
        if not self.changed():
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        lines, consumed = complete_lines(chunk)
        self.offset += consumed
        out: list[dict[str, Any]] = []
        for line in lines:
            self.lines_read += 1
            with contextlib.suppress(ValueError):
                doc = orjson.loads(line)
                if isinstance(doc, dict):
                    out.append(doc)
        return out


def unread_controls(attempt_dir: Path, offset: int) -> tuple[dict[str, Any], ...]:
    """The control lines of ``attempt_dir`` past ``offset`` (where a stage's result says its
    inbox stopped reading), as ``{"type": ..., fields}``."""
    lines = LineFollower(attempt_dir / CONTROL, offset).read()
    return tuple(f for f in map(line_fields, lines) if f is not None)


class ControlInbox:
    """The stage's side of the control file: what arrived since the last step boundary."""

    def __init__(self, attempt_dir: Path, offset: int) -> None:
        self._follower = LineFollower(attempt_dir / CONTROL, offset)
        self._applied: set[str] = set()

    @property
    def offset(self) -> int:
        return self._follower.offset

    def poll(self) -> StepDirective:
        if not self._follower.changed():  # the common case: one stat() per step
            return StepDirective()
        # A bare line (written by an older agent, or by hand) is read as it is.
        commands = [f for f in map(line_fields, self._follower.read()) if f is not None]
        directive = at_step_boundary(commands, frozenset(self._applied))
        self._applied.update(a.action_id for a in directive.applied)
        return directive


class EventOutbox:
    """The stage's side of the events file: the reports of the stage ``run`` runs, as messages.
    A multi-rank stage's ranks other than 0 have a silent one (``enabled=False``): rank 0
    reports what every rank did."""

    def __init__(self, attempt_dir: Path, run: RunStage, *, enabled: bool = True) -> None:
        self.path = attempt_dir / EVENTS
        self.enabled = enabled
        self._key = run.pipeline_id
        self._routing: dict[str, Any] = {
            "pipeline_id": run.pipeline_id,
            "stage": run.stage,
            "attempt": run.attempt,
            "command_id": run.command_id,
            "agent_id": run.agent_id,
            "job_id": run.job_id,
        }

    def _append(self, message: Message) -> None:
        if self.enabled:
            append_message(self.path, message, self._key)

    def checkpoint_saved(
        self, step: int, path: str, reason: str, non_finite: tuple[str, ...] = ()
    ) -> None:
        self._append(
            CheckpointSaved.model_validate(
                {
                    **self._routing,
                    "step": step,
                    "path": path,
                    "reason": reason,
                    "non_finite": list(non_finite),
                }
            )
        )

    # ``action`` is a name read from the control file: the message checks it is an ActionKind.
    def action_refused(self, action_id: str, action: str, step: int | None, reason: str) -> None:
        fields = {"action_id": action_id, "action": action, "step": step, "reason": reason}
        self._append(ActionRefused.model_validate({**self._routing, **fields}))

    def action_applied(
        self, action_id: str, action: str, step: int, details: dict[str, Any]
    ) -> None:
        fields = {"action_id": action_id, "action": action, "step": step, "details": details}
        self._append(ActionApplied.model_validate({**self._routing, **fields}))
