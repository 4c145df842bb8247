"""The local spill file: where metric points wait while Kafka cannot take them.

A reporter owns one spill file per (job, source) and holds an exclusive ``flock`` on a lock file
next to it for its whole life; a later reporter of the same job adopts the files whose lock it
can take (their owner is gone) and delivers them. Each line is one point with its identity::

    {"job_id": ..., "source": ..., "seq": 17, "pipeline_id": ..., "stage": ..., "attempt": 0,
     "point": {<MetricPoint as JSON, NaN kept as "NaN">}}

Delivery is at-least-once: a batch is taken by renaming the file to ``*.sending`` (new points go
to a fresh file meanwhile) and the renamed file is deleted only after the broker acknowledged it.
A crash in between re-sends the batch with the same (job, source, seq), which ingest dedups.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson

from posttrain.events.messages import MetricPoint
from posttrain.service.settings import posttrain_home

SPILL_SUFFIX = ".spill.jsonl"
SENDING_SUFFIX = ".sending"
LOCK_SUFFIX = ".lock"


@dataclass(frozen=True, slots=True)
class SpilledPoint:
    """A point with the identity that ingest dedups on and the routing that travels with it."""

    job_id: str
    source: str
    seq: int
    point: MetricPoint
    pipeline_id: str | None = None
    stage: str | None = None
    attempt: int | None = None

    def to_line(self) -> bytes:
        head = orjson.dumps(
            {
                "job_id": self.job_id,
                "source": self.source,
                "seq": self.seq,
                "pipeline_id": self.pipeline_id,
                "stage": self.stage,
                "attempt": self.attempt,
            }
        )
        # pydantic writes the point: NaN stays "NaN" where orjson would write null.
        return head[:-1] + b',"point":' + self.point.model_dump_json().encode() + b"}\n"

    @classmethod
    def from_line(cls, line: bytes) -> SpilledPoint:
        doc: dict[str, Any] = orjson.loads(line)
        return cls(
            job_id=doc["job_id"],
            source=doc["source"],
            seq=int(doc["seq"]),
            point=MetricPoint.model_validate(doc["point"]),
            pipeline_id=doc.get("pipeline_id"),
            stage=doc.get("stage"),
            attempt=doc.get("attempt"),
        )


def default_spill_dir() -> Path:
    """``POSTTRAIN_SPILL_DIR``, else ``~/.cache/posttrain/spill`` (outside any checkout)."""
    configured = os.environ.get("POSTTRAIN_SPILL_DIR")
    if configured:
        return Path(configured).expanduser()
    return posttrain_home() / "spill"


def _safe_job(job_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in job_id)[:80]


def _file_stem(job_id: str, source: str) -> str:
    # Sources contain ':' and host names; a digest keeps the file name portable.
    digest = hashlib.sha1(source.encode()).hexdigest()[:16]
    return f"{_safe_job(job_id)}.{digest}"


class SpillFile:
    """The spill file of one reporter, safe to append to from the training thread while the
    background thread takes batches out of it."""

    def __init__(self, directory: Path, job_id: str, source: str) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        stem = self.stem = _file_stem(job_id, source)
        self.path = directory / f"{stem}{SPILL_SUFFIX}"
        self.sending = directory / f"{stem}{SPILL_SUFFIX}{SENDING_SUFFIX}"
        self._lock_path = directory / f"{stem}{LOCK_SUFFIX}"
        self._lock_fh: TextIO | None = open(self._lock_path, "w")  # noqa: SIM115 (held for life)
        fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._mutex = threading.Lock()
        self._out: Any = None
        self.lines_written = 0
        # Whether points wait on disk, kept in memory: the file is this reporter's alone (the
        # lock above), and the sender asks before every batch, where a stat() per file was a
        # quarter of its work. Read from disk once, for files a crashed namesake left.
        self._sending_present = self.sending.exists()
        self._fresh = self.path.exists() and self.path.stat().st_size > 0

    def append(self, points: Iterable[SpilledPoint]) -> int:
        """Append points and push them to the OS; returns how many were written."""
        data = b"".join(p.to_line() for p in points)
        if not data:
            return 0
        with self._mutex:
            if self._out is None:
                self._out = open(self.path, "ab")  # noqa: SIM115 (kept open between appends)
            self._out.write(data)
            self._out.flush()
            self._fresh = True
            count = data.count(b"\n")
            self.lines_written += count
            return count

    def has_pending(self) -> bool:
        return self._sending_present or self._fresh

    def take(self) -> list[SpilledPoint]:
        """The points waiting in ``*.sending`` (taken earlier, not yet acknowledged), or else the
        current file's, which is renamed to ``*.sending`` first. ``acknowledge`` deletes it."""
        with self._mutex:
            if not self.sending.exists():
                if not self.path.exists():
                    self._fresh = self._sending_present = False
                    return []
                if self._out is not None:
                    self._out.close()
                    self._out = None
                self.path.rename(self.sending)
                self._fresh = False
            self._sending_present = True
        return read_points(self.sending)

    def acknowledge(self) -> None:
        with self._mutex:
            with contextlib.suppress(FileNotFoundError):
                self.sending.unlink()
            self._sending_present = False

    def close(self, *, remove_if_empty: bool = True) -> None:
        with self._mutex:
            if self._out is not None:
                self._out.close()
                self._out = None
            if remove_if_empty:
                for path in (self.path, self.sending):
                    with contextlib.suppress(FileNotFoundError):
                        if path.stat().st_size == 0:
                            path.unlink()
            if self._lock_fh is not None:
                pending = self.path.exists() or self.sending.exists()
                if not pending:
                    with contextlib.suppress(FileNotFoundError):
                        self._lock_path.unlink()
                fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
                self._lock_fh.close()
                self._lock_fh = None


def read_points(path: Path) -> list[SpilledPoint]:
    """Every readable point of a spill file. A torn last line (a crash mid-write) is skipped:
    it was never acknowledged to anyone, and its seq is simply never delivered."""
    points: list[SpilledPoint] = []
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break
            with contextlib.suppress(ValueError, KeyError, TypeError):
                points.append(SpilledPoint.from_line(line))
    return points


@dataclass(frozen=True, slots=True)
class OrphanFiles:
    """The spill files of a reporter that is gone, held (locked) by their adopter."""

    lock_path: Path
    files: tuple[Path, ...]
    lock_fh: TextIO

    def release(self) -> None:
        for path in self.files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.lock_path.unlink()
        fcntl.flock(self.lock_fh, fcntl.LOCK_UN)
        self.lock_fh.close()

    def abandon(self) -> None:
        """Give the files back (delivery failed): a later reporter adopts them."""
        fcntl.flock(self.lock_fh, fcntl.LOCK_UN)
        self.lock_fh.close()


def adopt_orphans(
    directory: Path, job_id: str, exclude: str | None = None
) -> Iterator[OrphanFiles]:
    """Spill files of ``job_id`` whose owner has gone (their lock can be taken), one set per
    former reporter, each locked until released or abandoned. ``exclude`` is the caller's own
    file stem."""
    if not directory.is_dir():
        return
    safe_job = _safe_job(job_id)
    stems = {
        path.name.split(SPILL_SUFFIX, 1)[0]
        for path in directory.glob(f"{safe_job}.*{SPILL_SUFFIX}*")
    }
    for stem in sorted(stems):
        if stem == exclude or stem.rsplit(".", 1)[0] != safe_job:
            continue  # our own, or another job whose name starts like this one
        lock_path = directory / f"{stem}{LOCK_SUFFIX}"
        fh = open(lock_path, "a")  # noqa: SIM115 (lifetime managed by OrphanFiles)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()  # its reporter is alive and delivers them itself
            continue
        files = tuple(
            p
            for p in (
                directory / f"{stem}{SPILL_SUFFIX}{SENDING_SUFFIX}",
                directory / f"{stem}{SPILL_SUFFIX}",
            )
            if p.exists()
        )
        yield OrphanFiles(lock_path, files, fh)
