"""Mode B of SEED.md section 2 on the agent's side: a stage that runs where Kafka is not
reachable reports to its metric file (``FileReporter``), which the agent, or anything with the
file, follows onto ``posttrain.metrics`` (``tailer``). The file's format, reader and writer are
``posttrain.events.metricfile``'s; its names are re-exported here, where callers import them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from posttrain.events.messages import MetricPoint
from posttrain.events.metricfile import (
    FILE_SUFFIX,
    MetricsFileWriter,
    create_metrics_file_writer,
    metrics_file_path,
)
from posttrain.trainer_agent.reporting import TrainingCallback

__all__ = [
    "FILE_SUFFIX",
    "FileReporter",
    "MetricsFileWriter",
    "create_metrics_file_writer",
    "metrics_file_path",
]


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
