"""Batch diagnosis over the metric rows in PostgreSQL, through the same detectors as the stream.

    service = DiagnosticService(database_url)
    await service.diagnose_job(job_uuid)        # {"has_anomaly", "anomaly_type", ...}
    await service.diagnose_step(job_uuid, step)

Points are read through metrics_ingest's query API (``get_job_points``) in each source's
emission order (seq), exactly as the stream folds them, so both find the same anomalies with the
same ids. ``diagnose_job`` also lists what the stream raised and did (``recorded``: the anomalies
the recorder kept, with their actions; ``queries.aget_anomalies``).
``scan_failed_jobs`` asks the orchestrator's read model for attempts that failed out of GPU
memory (its client's ``aget_oom_failures``; diagnostics reads no other service's tables) and
raises gpu_oom for each, with the id the stream gives the same failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from posttrain.diagnostics.core.anomaly import (
    SEVERITY_RANK,
    Anomaly,
    oom_anomaly,
)
from posttrain.diagnostics.core.config import ConfigBook, DetectorConfig
from posttrain.diagnostics.core.messages import anomaly_detected, oom_detected
from posttrain.diagnostics.core.state import JobState
from posttrain.diagnostics.queries import aget_anomalies
from posttrain.events import Envelope
from posttrain.events.kafka import EventProducer
from posttrain.events.messages.diagnostics import AnomalyDetected
from posttrain.events.messages.metrics import MetricPoint
from posttrain.events.topics import Topic
from posttrain.metrics_ingest.queries import get_job_points, get_metric_jobs
from posttrain.orchestrator.client import aget_oom_failures
from posttrain.service.settings import DEFAULT_DATABASE_URL

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SourcedPoint:
    source: str | None
    seq: int | None
    point: MetricPoint


@dataclass(frozen=True, slots=True)
class JobContext:
    pipeline_id: str | None = None
    stage: str | None = None
    attempt: int | None = None


def diagnose(points: Iterable[SourcedPoint | MetricPoint], config: DetectorConfig) -> list[Anomaly]:
    """Fold points (in emission order) through a fresh job state; every anomaly raised."""
    state = JobState(config)
    out: list[Anomaly] = []
    for item in points:
        if isinstance(item, MetricPoint):
            out.extend(state.observe(item))
        else:
            out.extend(state.observe(item.point, source=item.source, seq=item.seq))
    return out


def summarize(job_id: str, anomalies: Sequence[Anomaly], **extra: Any) -> dict[str, Any]:
    """The seed's result: has_anomaly / anomaly_type / anomaly_message / suggestions describe the
    most severe anomaly (the latest among equals); info-level ones (a new best reward) are
    listed but do not count as an anomaly. ``anomalies`` has them all, in order."""
    serious = [a for a in anomalies if a.severity != "info"]
    top = None
    if serious:
        top = max(serious, key=lambda a: (SEVERITY_RANK[a.severity], a.generation, a.step))
    return {
        "job_id": job_id,
        "has_anomaly": top is not None,
        "anomaly_type": top.anomaly_type.value if top else None,
        "anomaly_message": top.message if top else None,
        "suggestions": list(top.suggestions) if top else [],
        "anomalies": [{"anomaly_id": a.id_for(job_id), **a.to_dict()} for a in anomalies],
        **extra,
    }


def emission_order(points: list[SourcedPoint]) -> list[SourcedPoint]:
    """Each source's points (given in seq order) as they were sent: several sources are
    interleaved by time."""
    by_source: dict[str | None, list[SourcedPoint]] = {}
    for p in points:
        by_source.setdefault(p.source, []).append(p)
    if len(by_source) <= 1:
        return points
    return list(heapq.merge(*by_source.values(), key=lambda p: (p.point.timestamp, p.source or "")))


class DiagnosticService:
    """The seed's ``DiagnosticService(session)``: here over a database URL or an asyncpg pool."""

    def __init__(
        self,
        database: str | asyncpg.Pool | None = None,
        book: ConfigBook | None = None,
    ) -> None:
        self._database = database or DEFAULT_DATABASE_URL
        self._pool: asyncpg.Pool | None = database if isinstance(database, asyncpg.Pool) else None
        self._own_pool = self._pool is None
        self._lock = asyncio.Lock()
        self.book = book or ConfigBook()

    async def _db(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(str(self._database), min_size=1, max_size=4)
            return self._pool

    async def close(self) -> None:
        if self._own_pool and self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def __aenter__(self) -> DiagnosticService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def load(
        self, job_id: str, up_to_step: int | None = None
    ) -> tuple[JobContext, list[SourcedPoint]]:
        pool = await self._db()
        jobs = await get_metric_jobs(job_id=job_id, db=pool)
        stored = await get_job_points(job_id, step_to=up_to_step, db=pool)
        context = (
            JobContext(jobs[0].pipeline_id, jobs[0].stage, jobs[0].attempt)
            if jobs
            else JobContext()
        )
        return context, emission_order([SourcedPoint(m.source, m.seq, m.point) for m in stored])

    async def anomalies(self, job_id: str) -> tuple[JobContext, list[Anomaly]]:
        context, points = await self.load(job_id)
        config = self.book.for_pipeline(context.pipeline_id).detectors
        return context, diagnose(points, config)

    async def diagnose_job(self, job_uuid: str) -> dict[str, Any]:
        """Every anomaly of the job's stored points; ``recorded``: the anomalies the stream
        raised for the job and the actions taken on each, as the recorder kept them."""
        context, found = await self.anomalies(job_uuid)
        recorded = await aget_anomalies(job_id=job_uuid, db=await self._db())
        return summarize(
            job_uuid,
            found,
            pipeline_id=context.pipeline_id,
            stage=context.stage,
            recorded=[r.to_dict() for r in recorded],
        )

    async def diagnose_step(self, job_uuid: str, step: int) -> dict[str, Any]:
        """The anomalies raised at ``step`` (with the job's history before it as the windows)."""
        context, points = await self.load(job_uuid, up_to_step=step)
        config = self.book.for_pipeline(context.pipeline_id).detectors
        at_step = [a for a in diagnose(points, config) if a.step == step]
        return summarize(
            job_uuid, at_step, step=step, pipeline_id=context.pipeline_id, stage=context.stage
        )

    async def anomaly_events(self, job_id: str) -> list[AnomalyDetected]:
        """The job's anomalies as the stream would have emitted them."""
        context, found = await self.anomalies(job_id)
        return [
            anomaly_detected(
                job_id,
                a,
                pipeline_id=context.pipeline_id,
                stage=context.stage,
                attempt=context.attempt,
            )
            for a in found
        ]

    async def scan_failed_jobs(self) -> list[AnomalyDetected]:
        """gpu_oom for every failed attempt in the orchestrator's read model whose failure kind
        is ``oom`` (or whose error says CUDA ran out of memory)."""
        found: list[AnomalyDetected] = []
        for failure in await aget_oom_failures(db=await self._db()):
            if not failure.job_id or not failure.command_id:
                continue
            anomaly = oom_anomaly(failure.error, step=None)
            found.append(
                oom_detected(
                    failure.job_id,
                    failure.command_id,
                    anomaly,
                    pipeline_id=failure.pipeline_id,
                    stage=failure.stage,
                    attempt=failure.attempt,
                )
            )
        return found

    async def publish_failed_jobs(self, producer: EventProducer) -> int:
        """Raise the scan's anomalies on posttrain.anomalies (ids are stable: re-raising one is
        harmless downstream, where actions and alerts dedup by anomaly id)."""
        events = await self.scan_failed_jobs()
        if events:
            await producer.send_many(
                Topic.ANOMALIES, [Envelope.create(e, key=e.job_id) for e in events]
            )
        return len(events)

    async def run_periodic_scan(
        self, producer: EventProducer, interval_s: float = 60.0, stop: asyncio.Event | None = None
    ) -> None:
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                await self.publish_failed_jobs(producer)
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("failed-job scan failed", extra={"error": str(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
