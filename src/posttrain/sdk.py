"""The seed's API (SEED.md), as its examples call it: every call blocking, in the seed's argument
order, each with an ``a``-prefixed coroutine twin for code that runs in an event loop.

``from posttrain import PipelineExecutor, get_latest_metrics, ...`` gives these names. Where the
seed passes a SQLAlchemy ``session``, any of these is accepted: nothing (``DATABASE_URL``, else
the local stack's database), a ``postgresql://`` URL, a SQLAlchemy session, engine or connection
(its URL is used), or, in the ``a``-twins only, an asyncpg connection or pool (which belongs to
the caller's event loop).

The names are thin: each forwards to the service that owns the behaviour (the orchestrator's
client, the ingest's queries and flush, the diagnostics' batch diagnosis and alerts, the trainer
agent's reporting), so a reader finds the behaviour by following the import.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import asyncpg

from posttrain import SDK_NAMES
from posttrain.diagnostics.alerts import Delivery
from posttrain.diagnostics.alerts import send_alert as _send_alert
from posttrain.diagnostics.batch import DiagnosticService as _BatchDiagnosis
from posttrain.events.runner import run_sync
from posttrain.metrics_ingest import filesync
from posttrain.metrics_ingest import queries as metric_queries
from posttrain.metrics_ingest.flushing import FlushFailed as FlushFailed
from posttrain.metrics_ingest.flushing import flush_metrics as _flush_metrics
from posttrain.metrics_ingest.queries import Run, StoredMetric
from posttrain.orchestrator import client as orchestrator
from posttrain.orchestrator.client import DagResolver as DagResolver
from posttrain.orchestrator.client import InvalidPipeline as InvalidPipeline
from posttrain.orchestrator.client import PipelineExecutor as PipelineExecutor
from posttrain.orchestrator.client import UnknownPipeline as UnknownPipeline
from posttrain.service.settings import database_url
from posttrain.trainer_agent.metrics_file import (
    create_metrics_file_writer as create_metrics_file_writer,
)
from posttrain.trainer_agent.reporting import (
    create_training_callback as create_training_callback,
)

# The names themselves are listed once, in posttrain/__init__.py (which loads them from here).
__all__ = list(SDK_NAMES)

# What the seed passes as ``session``: see the module's docstring.
Session = Any


def database_url_of(session: Session = None) -> str:
    """The PostgreSQL URL a ``session`` stands for (asyncpg's spelling)."""
    if session is None:
        return database_url()
    if isinstance(session, str):
        return session
    if isinstance(session, asyncpg.Connection | asyncpg.Pool):
        raise TypeError(
            "an asyncpg connection or pool belongs to its own event loop: pass it to the "
            "a-prefixed twin (await aget_latest_metrics(..., pool)), or pass a URL here"
        )
    url = _sqlalchemy_url(session)
    if url is None:
        raise TypeError(
            f"cannot find a database in a {type(session).__name__}: pass a postgresql:// URL, a "
            "SQLAlchemy session or engine, or nothing (DATABASE_URL)"
        )
    return url


def _sqlalchemy_url(session: Any) -> str | None:
    # Session.get_bind() -> Engine or Connection; Connection.engine; Engine.url (a URL object).
    bind = session.get_bind() if hasattr(session, "get_bind") else session
    engine = getattr(bind, "engine", bind)
    url = getattr(engine, "url", None)
    if url is None:
        return None
    text = (
        url.render_as_string(hide_password=False) if hasattr(url, "render_as_string") else str(url)
    )
    scheme, sep, rest = text.partition("://")
    # postgresql+psycopg2:// and friends: asyncpg speaks the same protocol.
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


def _db_kwargs(session: Session) -> dict[str, Any]:
    """For an ``a``-twin: the caller's asyncpg connection or pool, or a URL."""
    if isinstance(session, asyncpg.Connection | asyncpg.Pool):
        return {"db": session}
    return {"database_url": database_url_of(session)}


# --- pipelines -------------------------------------------------------------------------------


async def aget_pipeline_status(
    pipeline_uuid: str, session: Session = None
) -> dict[str, Any] | None:
    """The pipeline's status and its stages (None if unknown). See ``get_pipeline_status``."""
    return await orchestrator.aget_pipeline_status(pipeline_uuid, **_db_kwargs(session))


def get_pipeline_status(pipeline_uuid: str, session: Session = None) -> dict[str, Any] | None:
    """Status, ``celery_task_id`` and per stage name, status, ``celery_task_id``, ``job_uuid``,
    ``started_at`` (and our own keys beside them); None if the pipeline is unknown."""
    return run_sync(aget_pipeline_status(pipeline_uuid, session))


# --- metrics ---------------------------------------------------------------------------------


async def aget_latest_metrics(
    job_uuid: str, limit: int = 10, session: Session = None, *, run: Run = None
) -> list[StoredMetric]:
    """See ``get_latest_metrics``."""
    kwargs = _db_kwargs(session)
    if "db" in kwargs:
        return await metric_queries.get_latest_metrics(job_uuid, limit, run=run, db=kwargs["db"])
    conn = await asyncpg.connect(kwargs["database_url"], timeout=10)
    try:
        return await metric_queries.get_latest_metrics(job_uuid, limit, run=run, db=conn)
    finally:
        await conn.close()


def get_latest_metrics(
    job_uuid: str, limit: int = 10, session: Session = None, *, run: Run = None
) -> list[StoredMetric]:
    """The job's ``limit`` latest points, newest first; each reads like the seed's
    (``m.loss``, ``m.step``, ``m.custom``). A job run twice (a script started again under the
    same job id, a stage's retry) has runs: the latest is read unless ``run`` names another
    (from 1) or ``"all"``."""
    return run_sync(aget_latest_metrics(job_uuid, limit, session, run=run))


async def async_metrics_from_file(
    job_uuid: str, path: str | os.PathLike[str], session: Session = None
) -> filesync.SyncResult:
    """See ``sync_metrics_from_file``."""
    kwargs = _db_kwargs(session)
    if "db" in kwargs:
        return await filesync.sync_metrics_from_file(job_uuid, path, db=kwargs["db"])
    conn = await asyncpg.connect(kwargs["database_url"], timeout=10)
    try:
        return await filesync.sync_metrics_from_file(job_uuid, path, db=conn)
    finally:
        await conn.close()


def sync_metrics_from_file(
    job_uuid: str, path: str | os.PathLike[str], session: Session = None
) -> filesync.SyncResult:
    """Store every point of a metrics JSONL file that is not stored yet (a point already
    stored, from the file's tailer or an earlier sync, is not stored twice)."""
    return run_sync(async_metrics_from_file(job_uuid, Path(path), session))


async def aflush_metrics(timeout_s: float = 60.0) -> int:
    """See ``flush_metrics``."""
    return await _flush_metrics(timeout_s)


def flush_metrics(timeout_s: float = 60.0) -> int:
    """Make every point the metrics topic holds now durable in PostgreSQL: each running ingest
    instance (in this process or any other) writes and commits what it holds. Returns the rows
    written; raises ``FlushFailed`` saying why when that cannot be done within ``timeout_s``."""
    return run_sync(aflush_metrics(timeout_s))


# --- diagnostics -----------------------------------------------------------------------------


class DiagnosticService:
    """``DiagnosticService(session)``: ``diagnose_step(job_uuid, step)`` and
    ``diagnose_job(job_uuid)`` return ``has_anomaly``, ``anomaly_type``, ``anomaly_message``,
    ``suggestions`` (and every anomaly found, with what the stream recorded)."""

    def __init__(self, session: Session = None) -> None:
        if isinstance(session, asyncpg.Pool):
            self._batch = _BatchDiagnosis(session)
        else:
            self._batch = _BatchDiagnosis(database_url_of(session))

    async def adiagnose_step(self, job_uuid: str, step: int) -> dict[str, Any]:
        return await self._batch.diagnose_step(job_uuid, step)

    def diagnose_step(self, job_uuid: str, step: int) -> dict[str, Any]:
        return run_sync(self.adiagnose_step(job_uuid, step))

    async def adiagnose_job(self, job_uuid: str) -> dict[str, Any]:
        return await self._batch.diagnose_job(job_uuid)

    def diagnose_job(self, job_uuid: str) -> dict[str, Any]:
        return run_sync(self.adiagnose_job(job_uuid))

    async def aclose(self) -> None:
        await self._batch.close()

    def close(self) -> None:
        run_sync(self.aclose())


async def asend_alert(
    job_uuid: str, anomaly_type: str, message: str, **options: Any
) -> list[Delivery]:
    """See ``send_alert``."""
    return await _send_alert(job_uuid, anomaly_type, message, **options)


def send_alert(job_uuid: str, anomaly_type: str, message: str, **options: Any) -> list[Delivery]:
    """Send one alert (job_uuid, anomaly, message, timestamp) to the configured channels
    (Slack, Feishu, webhooks; ``POSTTRAIN_DIAGNOSTICS_CONFIG``); returns each delivery."""
    return run_sync(asend_alert(job_uuid, anomaly_type, message, **options))
