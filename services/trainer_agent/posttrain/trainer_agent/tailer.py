"""Follow a JSONL metrics file onto ``posttrain.metrics``: the project's file format
(``metrics_file``) or verl's ``file`` logger (``VERL_FILE_LOGGER_PATH``).

The tailer resumes from the offset it saved, waits for a line's newline before reading it, and
notices when the file was truncated or replaced (then it starts again at the top, as a new
generation). Each line's identity is ``(source, seq)``: the source names the file (host, path,
inode, generation) and seq is the line's number, so re-reading lines after a crash re-sends the
same points, which ingest dedups, and never invents new ones.

The lines' format and the points' identity are the metric file's (``posttrain.events.metricfile``):
the source is named by the file's first line, so ``posttrain metrics sync`` of the same file finds
the same points.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from posttrain.events.messages import MetricPoint
from posttrain.events.metricfile import (
    LineError,
    complete_lines,
    file_source,
    parse_line,
    source_of_file,
)
from posttrain.trainer_agent.reporting import MetricsReporter

# How many bytes at the head of the file identify it: a file rewritten in place (truncated and
# refilled past the saved offset between two polls) shows a different head.
_HEAD_BYTES = 256
_READ_BYTES = 4 * 1024 * 1024


@dataclass(slots=True)
class TailState:
    offset: int = 0
    line: int = 0
    generation: int = 0
    inode: int = 0
    head: str = ""  # sha1 of the first head_len bytes
    head_len: int = 0
    source: str = ""  # metricfile.file_source of the first non-blank line, once read


@dataclass(frozen=True, slots=True)
class TailedPoint:
    source: str
    seq: int
    point: MetricPoint


def take_lines(state: TailState, chunk: bytes) -> tuple[list[TailedPoint], int]:
    """The points of the complete lines of ``chunk`` (the bytes of the file at
    ``state.offset``), advancing ``state`` past them; and how many lines were not points.

    Shared by every tailer, local or remote: a point's identity is the metric file's (its
    line number, and the source its first line names), so the same line read again (after a
    restart or a reconnection, or by ``posttrain metrics sync``) is the same point."""
    lines, consumed = complete_lines(chunk)
    if not lines:
        return [], 0
    now = time.time()
    out: list[TailedPoint] = []
    skipped = 0
    for line in lines:
        if not line.strip():
            state.line += 1
            continue
        if not state.source:
            state.source = file_source(line)
        try:
            point = parse_line(line, now)
        except LineError:
            skipped += 1
        else:
            out.append(TailedPoint(state.source, state.line, point))
        state.line += 1
    state.offset += consumed
    return out, skipped


def load_tail_state(path: Path) -> TailState:
    """A position saved by ``save_tail_state``, or the top of the file."""
    try:
        doc = json.loads(path.read_text())
        return TailState(**{k: doc[k] for k in TailState.__dataclass_fields__ if k in doc})
    except (FileNotFoundError, ValueError, TypeError):
        return TailState()


def save_tail_state(path: Path, state: TailState) -> None:
    """Persist a position (atomically: a crash leaves the old or the new one)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(state)))
    tmp.replace(path)


class MetricsFileTailer:
    """Reads new complete lines of one file; ``save()`` persists the position."""

    def __init__(self, path: str | Path, state_path: str | Path | None = None) -> None:
        self.path = Path(path)
        self.state_path = (
            Path(state_path) if state_path else self.path.with_name(self.path.name + ".offset")
        )
        self.state = self._load_state()
        self.skipped_lines = 0

    @property
    def source(self) -> str:
        """The source of the file's points ("" until its first line is read)."""
        return self.state.source

    def poll(self) -> list[TailedPoint]:
        """The points of the lines completed since the last poll."""
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            return []
        with fh:
            st = os.fstat(fh.fileno())
            self._check_identity(st.st_ino, st.st_size)
            state = self.state
            if st.st_size <= state.offset:
                return []
            if state.offset > 0 and not state.source:
                # A position saved before sources were named by the file's first line.
                state.source = source_of_file(fh) or ""
            fh.seek(state.offset)
            chunk = fh.read(_READ_BYTES)
        out, skipped = take_lines(state, chunk)
        self.skipped_lines += skipped
        if state.head_len < min(state.offset, _HEAD_BYTES):
            state.head_len = min(state.offset, _HEAD_BYTES)
            state.head = self._head_digest(state.head_len)
        return out

    def save(self) -> None:
        """Persist the position (atomically: a crash leaves the old or the new one)."""
        save_tail_state(self.state_path, self.state)

    def _check_identity(self, inode: int, size: int) -> None:
        state = self.state
        if state.inode == 0 and state.offset == 0:
            state.inode = inode
            return
        replaced = inode != state.inode
        truncated = size < state.offset
        rewritten = (
            not replaced
            and not truncated
            and state.head_len > 0
            and self._head_digest(state.head_len) != state.head
        )
        if replaced or truncated or rewritten:
            self.state = TailState(generation=state.generation + 1, inode=inode)

    def _head_digest(self, length: int) -> str:
        with contextlib.suppress(FileNotFoundError), open(self.path, "rb") as fh:
            return hashlib.sha1(fh.read(length)).hexdigest()
        return ""

    def _load_state(self) -> TailState:
        return load_tail_state(self.state_path)


def follow(
    tailer: MetricsFileTailer,
    reporter: MetricsReporter,
    stop: threading.Event,
    *,
    poll_s: float = 0.5,
    durable_timeout_s: float = 30.0,
) -> int:
    """Tail until ``stop`` is set, then read what is left; returns the number of points sent.

    The position is saved only once the points read are on the broker or in the reporter's
    spill file: a crash before that re-reads them (same identity) instead of losing them."""
    sent = 0
    while True:
        finishing = stop.is_set()
        points = tailer.poll()
        for p in points:
            reporter.submit(p.source, p.seq, p.point)
        sent += len(points)
        if points and reporter.wait_durable(durable_timeout_s):
            tailer.save()
        if finishing and not points:
            return sent
        if not points:
            stop.wait(poll_s)
