"""Mode B of SEED.md section 2: metrics written to a local JSONL file, for training that runs
where Kafka is not reachable (over SSH, on another cluster). The agent, or anything with the
file, tails it onto ``posttrain.metrics`` (``tailer``).

File: ``<metrics_dir>/<job_uuid>_metrics.jsonl``. Format, one JSON object per line::

    {"job_id": "job-42", "step": 12, "epoch": 0.5, "timestamp": 1767225600.25,
     "loss": 0.42, "grad_norm": 1.3, ..., "custom": {"my_metric": 7}}

- ``step`` (int) is required; ``epoch`` and ``timestamp`` (seconds since the epoch) optional.
- Metric names are ``MetricPoint``'s canonical fields; a writer may also use any trainer's names
  (``grad_norm_actor``, TRL's ``reward``, verl's ``actor/pg_loss``...): readers map them.
- Non-finite values are the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``.
- Lines are appended whole (one write each) and never rewritten; a reader treats a line without
  its final newline as not yet written.

verl's ``file`` logger lines (``{"step": n, "data": {...}}``) are read from the same kind of file.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from posttrain.events.messages import MetricPoint
from posttrain.trainer_agent.core.fields import to_point
from posttrain.trainer_agent.reporting import TrainingCallback

FILE_SUFFIX = "_metrics.jsonl"


def metrics_file_path(metrics_dir: str | Path, job_uuid: str) -> Path:
    return Path(metrics_dir) / f"{job_uuid}{FILE_SUFFIX}"


class MetricsFileWriter:
    """Appends one line per call: ``writer(step=..., epoch=..., **fields)``, like the callback."""

    def __init__(self, job_uuid: str, metrics_dir: str | Path) -> None:
        self.job_uuid = job_uuid
        self.path = metrics_file_path(metrics_dir, job_uuid)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: BinaryIO | None = open(self.path, "ab")  # noqa: SIM115 (open until close)
        self._lock = threading.Lock()
        self._job_json = f'{{"job_id":{_json_string(job_uuid)},'.encode()

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


class FileReporter(TrainingCallback):
    """The reporter of a stage that runs where Kafka is not reachable (``run_mode: ssh``): its
    points go to its metrics file, which the agent follows onto ``posttrain.metrics``
    (``supervisors.ssh``) at byte offsets, so a line is one point however often it is read.

    It is a ``TrainingCallback`` (what a task is handed): called with a step's values, or
    handed points read from another file (``submit``, by ``command`` and verl stages)."""

    def __init__(self, job_id: str, path: str | Path) -> None:  # no sender thread, no broker
        self.job_id = job_id
        path = Path(path)
        self._writer = MetricsFileWriter(job_id, path.parent)
        if self._writer.path != path:
            self._writer.close()
            raise ValueError(f"{path}: a metrics file is named <job_id>{FILE_SUFFIX}")

    @property
    def path(self) -> Path:
        return self._writer.path

    def __call__(self, step: int, epoch: float | None = None, **fields: Any) -> None:
        self._writer(step, epoch, **fields)

    def submit(self, source: str, seq: int, point: MetricPoint) -> None:
        self._writer.write_point(point)

    def flush(self, timeout: float | None = 10.0) -> bool:
        self._writer.flush()
        return True

    def wait_durable(self, timeout: float | None = 10.0) -> bool:
        return self.flush(timeout)

    def close(self, timeout: float = 10.0) -> int:
        self._writer.flush()
        self._writer.close()
        return 0

    def stats(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "file": str(self.path)}


def _json_string(text: str) -> str:
    import json

    return json.dumps(text)


def create_metrics_file_writer(job_uuid: str, metrics_dir: str | Path) -> MetricsFileWriter:
    """A writer of ``<metrics_dir>/<job_uuid>_metrics.jsonl`` in the format described above."""
    return MetricsFileWriter(job_uuid, metrics_dir)
