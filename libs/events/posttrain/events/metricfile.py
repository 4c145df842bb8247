"""The JSONL metric file (SEED.md section 2, mode B): its format, its reader, its writer, and
the identity of its points, for every reader alike (the agent's tailers, ``posttrain metrics
sync``).

File: ``<metrics_dir>/<job_uuid>_metrics.jsonl``. Format, one JSON object per line::

    {"job_id": "job-42", "step": 12, "epoch": 0.5, "timestamp": 1767225600.25,
     "loss": 0.42, "grad_norm": 1.3, ..., "custom": {"my_metric": 7}}

- ``step`` (an integer) is required; ``epoch`` and ``timestamp`` (seconds since the epoch)
  optional; ``job_id``, when present, must be the file's job.
- Metric names are ``MetricPoint``'s canonical fields; a writer may also use any trainer's names
  (``grad_norm_actor``, TRL's ``reward``, verl's ``actor/pg_loss``...), mapped by ``aliases``.
  Any other name is kept under ``custom``: nothing in the file is dropped.
- Non-finite values are the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (``nonfinite``);
  Python's bare ``NaN``/``Infinity`` are read too.
- Lines are appended whole (one write each) and never rewritten; a reader treats a line without
  its final newline as not yet written, unless it is whole JSON.
- verl's ``file`` logger lines (``{"step": n, "data": {<verl names>}}``) are read from the same
  kind of file.

Identity: a line's point is ``(job, source, seq)``: seq is the line's number (from 0, blank and
unreadable lines counted) and the source names the file by its content, ``file_source`` of its
first non-blank line (the project's writer puts a timestamp in every line). Whoever reads the
file, on whichever machine, under whichever path, finds the same identities: a file tailed by an
agent and synced by hand is stored once, and a file replaced by another (a new first line) is a
new source. Two files whose first lines are byte for byte the same are taken for one: a script
that writes no timestamp and the same first values into a new file at each attempt has its
later attempts' points taken for the first's (the project's writer stamps every line, and verl's
logger writes its timings, so neither does).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from pydantic import ValidationError

from posttrain.events.aliases import (
    ALIASES,
    COORDINATES,
    EPOCH_NAMES,
    as_number,
    jsonable,
    to_point,
)
from posttrain.events.messages.metrics import MetricPoint

FILE_SUFFIX = "_metrics.jsonl"
SOURCE_PREFIX = "file:"
_RECORD_KEYS = COORDINATES | {"job_id"}
# The keys of a verl ``file`` logger line that are not its other top-level values.
_VERL_LINE_KEYS = _RECORD_KEYS | {"data"}


def metrics_file_path(metrics_dir: str | os.PathLike[str], job_uuid: str) -> Path:
    """Where ``job_uuid``'s metric file lives in ``metrics_dir``."""
    return Path(metrics_dir) / f"{job_uuid}{FILE_SUFFIX}"


def job_from_file_name(name: str) -> str | None:
    """``job-42_metrics.jsonl`` -> ``job-42`` (the writer's naming); None if the name does
    not say."""
    if name.endswith(FILE_SUFFIX) and len(name) > len(FILE_SUFFIX):
        return name[: -len(FILE_SUFFIX)]
    return None


def file_source(first_line: bytes) -> str:
    """The source of every point of the file whose first non-blank line is ``first_line``
    (with or without its newline)."""
    return SOURCE_PREFIX + hashlib.sha1(first_line.strip()).hexdigest()[:16]


def source_of_file(fh: BinaryIO) -> str | None:
    """``file_source`` of an open file (read from its start), or None while it holds no
    non-blank line."""
    fh.seek(0)
    for line in fh:
        if line.strip():
            return file_source(line)
    return None


class LineError(ValueError):
    """A line that holds no point; the message says why."""


@dataclass(frozen=True, slots=True)
class FileLine:
    """Line ``number`` (from 0): its point, or why it has none."""

    number: int
    point: MetricPoint | None
    error: str | None = None


def complete_lines(chunk: bytes) -> tuple[list[bytes], int]:
    """The complete lines of ``chunk`` (without their newline) and how many bytes they span.

    Bytes after the last newline are a line still being written: not consumed."""
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], 0
    return chunk[:end].split(b"\n"), end + 1


def read_lines(
    lines: Iterable[bytes], default_timestamp: float, job_id: str | None = None
) -> Iterator[FileLine]:
    """Every non-blank line (as a file iterates them, newline included) with its point or its
    error, numbered from 0. An unfinished last line is read only if it parses whole."""
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            point = parse_line(line, default_timestamp, job_id)
        except LineError as exc:
            if not line.endswith(b"\n"):
                return  # the last line, still being written: read it next time
            yield FileLine(number, None, str(exc))
            continue
        yield FileLine(number, point)


def parse_line(line: bytes, default_timestamp: float, job_id: str | None = None) -> MetricPoint:
    """The point of one line of the project's format or verl's; ``LineError`` says why a line
    holds none. With ``job_id``, a line written for another job is refused."""
    record = _json(line)
    if not isinstance(record, dict):
        raise LineError(f"expected a JSON object, got {type(record).__name__}")
    line_job = record.get("job_id")
    if job_id is not None and line_job is not None and line_job != job_id:
        raise LineError(f"line is for job {line_job!r}, not {job_id!r}")
    try:
        return point_from_record(record, default_timestamp)
    except ValidationError as exc:
        raise LineError(f"not a metric point: {exc.errors()[0]['msg']}") from None


def _json(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    # Python's json writes NaN/Infinity bare (verl's logger does); only json reads them back.
    try:
        return json.loads(line)
    except ValueError as exc:
        raise LineError(f"not JSON: {exc}") from None


def point_from_record(record: Mapping[str, Any], default_timestamp: float) -> MetricPoint:
    """A point from one JSON record of either format (``LineError`` if its step is unusable).

    - the project's format: ``{"step": n, "epoch": e, "timestamp": t, <names>..., "custom": {}}``
      (canonical names or any trainer's names, mapped by ``ALIASES``);
    - verl's ``file`` logger: ``{"step": n, "data": {<verl names>}}``.
    """
    step = record.get("step")
    if isinstance(step, float) and math.isfinite(step) and step.is_integer():
        step = int(step)
    if isinstance(step, bool) or not isinstance(step, int):
        raise LineError(f"'step' must be an integer, got {step!r}")
    data = record.get("data")
    timestamp = as_number(record.get("timestamp"))
    if timestamp is None:
        timestamp = default_timestamp
    if isinstance(data, Mapping) and not any(k in record for k in ALIASES):
        return _verl_point(step, record, data, timestamp)
    return to_point(step, as_number(record.get("epoch")), timestamp, record, _RECORD_KEYS)


def _verl_point(
    step: int, record: Mapping[str, Any], data: Mapping[str, Any], timestamp: float
) -> MetricPoint:
    """verl's line: its names sit under ``data``. orjson (verl's writer since January 2026)
    writes a NaN or an infinity as ``null``, and verl logs nothing but numbers there, so a null
    is read back as NaN: a NaN loss must stay visible. The epoch comes from ``EPOCH_NAMES``, and
    the line's other top-level values (``elapsed_seconds``, written by wrappers) stay in custom."""
    fields = {k: (math.nan if v is None else v) for k, v in data.items()}
    epoch_name = next((n for n in EPOCH_NAMES if as_number(fields.get(n)) is not None), None)
    epoch = as_number(fields.pop(epoch_name)) if epoch_name else as_number(record.get("epoch"))
    point = to_point(step, epoch, timestamp, fields, _RECORD_KEYS)
    extra = {str(k): jsonable(v) for k, v in record.items() if k not in _VERL_LINE_KEYS}
    if not extra:
        return point
    return point.model_copy(update={"custom": {**point.custom, **extra}})


class MetricsFileWriter:
    """Appends one line per call: ``writer(step=..., epoch=..., **fields)``, like the callback."""

    def __init__(self, job_uuid: str, metrics_dir: str | os.PathLike[str]) -> None:
        self.job_uuid = job_uuid
        self.path = metrics_file_path(metrics_dir, job_uuid)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: BinaryIO | None = open(self.path, "ab")  # noqa: SIM115 (open until close)
        self._lock = threading.Lock()
        self._job_json = b'{"job_id":' + orjson.dumps(job_uuid) + b","

    def __call__(self, step: int, epoch: float | None = None, **fields: Any) -> None:
        self.write_point(to_point(step, epoch, time.time(), fields))

    def write_point(self, point: MetricPoint) -> None:
        """Append one point already in canonical fields."""
        body = point.model_dump_json(exclude_none=True).encode()
        line = self._job_json + body[1:] + b"\n"
        with self._lock:
            if self._fh is None:
                raise ValueError(f"metrics file writer for {self.job_uuid} is closed")
            # One write per line, flushed: a reader never sees half of a line for long, and a
            # crash loses at most the line being written.
            self._fh.write(line)
            self._fh.flush()

    write = __call__

    def flush(self) -> None:
        """Flush and fsync what was written."""
        with self._lock:
            if self._fh is not None:
                self._fh.flush()
                os.fsync(self._fh.fileno())

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def __enter__(self) -> MetricsFileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create_metrics_file_writer(
    job_uuid: str, metrics_dir: str | os.PathLike[str]
) -> MetricsFileWriter:
    """A writer of ``<metrics_dir>/<job_uuid>_metrics.jsonl`` in the format described above."""
    return MetricsFileWriter(job_uuid, metrics_dir)
