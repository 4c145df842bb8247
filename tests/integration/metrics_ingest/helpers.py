"""Known sets of points, what the table holds, and an ingest service in its own process."""

from __future__ import annotations

import asyncio
import math
import urllib.request
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from posttrain.events import Envelope
from posttrain.events.kafka import KafkaSettings
from posttrain.events.messages.metrics import MetricPoint, MetricsReported
from posttrain.testing import services
from posttrain.testing.services import ServiceProcess
from tests.prometheus import samples

REPO = Path(__file__).resolve().parents[3]
WHEN = datetime(2026, 1, 1, tzinfo=UTC)

# (job_id, source, seq) -> (step, loss): what a point is, for comparing sets exactly.
PointSet = dict[tuple[str, str, int], tuple[int, float | None]]


def point(step: int, t0: float) -> MetricPoint:
    loss = math.nan if step % 97 == 13 else 1.0 / (1 + step)
    return MetricPoint(
        step=step,
        epoch=step / 1000,
        timestamp=t0 + step * 0.001,
        loss=loss,
        grad_norm=0.5 + (step % 7),
        custom={"k": step % 5} if step % 3 == 0 else {},
    )


def messages(
    job_id: str, source: str, count: int, *, per_message: int = 200, t0: float = 1.78e9
) -> tuple[list[Envelope[MetricsReported]], PointSet]:
    """``count`` points of one job and source, ``per_message`` to a message, and their set."""
    envelopes = []
    expected: PointSet = {}
    for first in range(0, count, per_message):
        points = [point(s, t0) for s in range(first, min(count, first + per_message))]
        envelopes.append(
            Envelope.create(
                MetricsReported(job_id=job_id, source=source, first_seq=first, points=points),
                key=job_id,
                occurred_at=WHEN,
            )
        )
        for i, p in enumerate(points):
            expected[(job_id, source, first + i)] = (p.step, p.loss)
    return envelopes, expected


async def stored(conn: asyncpg.Connection, job_ids: Iterable[str]) -> PointSet:
    """What the table holds for these jobs (duplicates would show as a count mismatch)."""
    rows = await conn.fetch(
        """
        SELECT j.job_id, s.source, m.seq, m.step, m.loss
        FROM metrics m
        JOIN metric_jobs j ON j.job_no = m.job_no
        JOIN metric_sources s ON s.source_no = m.source_no
        WHERE j.job_id = ANY($1::text[])
        """,
        list(job_ids),
    )
    out: PointSet = {}
    for r in rows:
        key = (r["job_id"], r["source"], r["seq"])
        assert key not in out, f"point {key} stored twice"
        out[key] = (r["step"], r["loss"])
    return out


async def count(conn: asyncpg.Connection, job_ids: Iterable[str]) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM metrics m JOIN metric_jobs j ON j.job_no = m.job_no "
            "WHERE j.job_id = ANY($1::text[])",
            list(job_ids),
        )
    )


def same_points(a: PointSet, b: PointSet) -> bool:
    def norm(v: tuple[int, float | None]) -> tuple[int, Any]:
        loss = v[1]
        return v[0], "nan" if loss is not None and math.isnan(loss) else loss

    return a.keys() == b.keys() and all(norm(a[k]) == norm(b[k]) for k in a)


class IngestProcess(ServiceProcess):
    """``python -m posttrain.metrics_ingest`` (``services.ingest``), its settings from
    ``env`` (``POSTTRAIN_INGEST_*``), killable with SIGKILL: no flush, no commit, no goodbye
    to the group."""

    def __init__(
        self, settings: KafkaSettings, database_url: str, log_path: Path, **env: str
    ) -> None:
        made = services.ingest(settings, database_url, log_path)
        environ = {**(made.env or {}), **env}
        super().__init__(made.name, made.argv, log_path, environ, made.port, REPO)

    def stop(self, timeout: float = 30.0) -> int:  # type: ignore[override]
        """SIGTERM and wait: the service writes and commits what it read, then exits; its
        exit status."""
        super().stop(timeout)
        assert self.process is not None
        return int(self.process.returncode)

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    async def prometheus(self) -> dict[str, float]:
        """The service's /metrics, as {sample name: value}; empty while it is not answering."""

        def get() -> str:
            url = f"http://127.0.0.1:{self.port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())

        try:
            text = await asyncio.to_thread(get)
        except OSError:
            return {}
        return samples(text)

    def log_tail(self) -> str:
        return self.tail(4000)
