"""The HTTP API: submit pipelines (JSON or YAML), read their status, follow them live (SSE),
resume, cancel, retry a stage, read a job's latest metrics and the anomalies kept for a job or a
pipeline (with the actions taken on each); and a web page over it (``/``).

Commands go to the orchestrator over Kafka, exactly as ``PipelineExecutor`` sends them; reads come
from the PostgreSQL read models. A pipeline the DAG validator refuses gets a 422 listing every
problem with its stage and field, and nothing is sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse

from posttrain.diagnostics.queries import aget_anomalies
from posttrain.events.kafka import EventProducer, KafkaSettings
from posttrain.gateway.auth import ANONYMOUS_ADMIN, Principal, Role, authenticate
from posttrain.metrics_ingest.queries import get_latest_metrics
from posttrain.orchestrator.api import PipelineExecutor, aget_pipeline_status, alist_pipelines
from posttrain.orchestrator.core.dag import InvalidPipeline
from posttrain.orchestrator.core.document import DocumentError, read_document
from posttrain.service.prometheus import CONTENT_TYPE, Exposition

_PAGE = Path(__file__).parent / "static" / "index.html"
MAX_BODY_BYTES = 1 << 20
log = logging.getLogger("posttrain.gateway")
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "rejected"})


@dataclass(frozen=True)
class GatewayConfig:
    kafka: KafkaSettings
    database_url: str
    # False: no authentication, every caller an admin (an explicit choice: --no-auth). True:
    # bearer tokens from the gateway's table (``posttrain token create``).
    auth: bool = True
    poll_interval_s: float = 0.5  # how often a live stream looks at the read model
    keepalive_s: float = 15.0  # a comment line on a quiet stream, so proxies keep it open
    address: str | None = None  # where it serves (for its start line); None in-process


def _invalid(errors: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse({"detail": "invalid pipeline", "errors": errors}, status_code=422)


async def _body(request: Request) -> bytes:
    """The request body, refused (413) as soon as it passes the limit, not after reading it."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPException(413, f"a pipeline document is at most {MAX_BODY_BYTES:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json(value: Any) -> bytes:
    # The encoder FastAPI's responses use, so that a time reads the same in a stream.
    return orjson.dumps(jsonable_encoder(value))


def create_app(config: GatewayConfig) -> FastAPI:
    counts: Counter[str] = Counter()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await asyncpg.create_pool(config.database_url, min_size=1, max_size=8)
        app.state.producer = EventProducer(config.kafka)
        await app.state.producer.start()
        identity = {
            "address": config.address,
            "auth": "tokens" if config.auth else "none (--no-auth)",
            "namespace": config.kafka.namespace,
            "kafka": config.kafka.bootstrap_servers,
        }
        log.info("gateway started", extra=identity)
        try:
            yield
        finally:
            await app.state.producer.stop()
            await app.state.pool.close()
            log.info("gateway stopped", extra=identity)

    app = FastAPI(
        title="posttrain",
        summary="LLM post-training pipelines: submit, follow, control.",
        version="0.1.0",
        lifespan=lifespan,
    )

    def require(needed: Role) -> Callable[..., Awaitable[Principal]]:
        async def check(
            request: Request, authorization: str | None = Header(default=None)
        ) -> Principal:
            if not config.auth:
                return ANONYMOUS_ADMIN
            principal = await authenticate(request.app.state.pool, authorization)
            if principal is None:
                raise HTTPException(
                    401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"}
                )
            if principal.role < needed:
                raise HTTPException(403, f"needs the {needed.name.lower()} role")
            return principal

        return check

    viewer = Depends(require(Role.VIEWER))
    submitter = Depends(require(Role.SUBMITTER))

    def executor(request: Request, pipeline_id: str | None, by: Principal) -> PipelineExecutor:
        # The token's name goes on the record as submitted_by / requested_by.
        return PipelineExecutor(
            pipeline_id,
            settings=config.kafka,
            submitted_by=by.name,
            producer=request.app.state.producer,
        )

    async def existing(request: Request, pipeline_id: str) -> dict[str, Any]:
        status = await aget_pipeline_status(pipeline_id, db=request.app.state.pool)
        if status is None:
            raise HTTPException(404, f"no pipeline {pipeline_id!r} (or not projected yet)")
        return status

    async def steerable(request: Request, pipeline_id: str, by: Principal) -> dict[str, Any]:
        """The pipeline's status, if ``by`` may resume, cancel or retry it (a submitter only
        its own; 403 otherwise)."""
        status = await existing(request, pipeline_id)
        if not by.may_steer(status["submitted_by"]):
            raise HTTPException(
                403,
                f"pipeline {pipeline_id!r} was submitted by another token: needs the admin role",
            )
        return status

    @app.post(
        "/v1/pipelines",
        status_code=202,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "application/yaml": {"schema": {"type": "string"}},
                },
            }
        },
    )
    async def submit(request: Request, by: Principal = submitter) -> JSONResponse:
        """Validate and submit a pipeline: a mapping with ``stages`` (and optional ``name``,
        ``settings``, ``pipeline_id``) as JSON, or as YAML with a YAML content type."""
        try:
            doc = read_document(
                await _body(request), request.headers.get("content-type", "application/json")
            )
        except DocumentError as exc:
            counts["rejected"] += 1
            return _invalid([{"stage": None, "field": exc.field, "message": exc.message}])
        pipeline = executor(request, doc.pipeline_id, by)
        try:
            result = await pipeline.aexecute(doc.stages, name=doc.name, settings=doc.settings)
        except InvalidPipeline as exc:
            counts["rejected"] += 1
            return _invalid([e.as_dict() for e in exc.errors])
        counts["submitted"] += 1
        pid = result["pipeline_uuid"]
        return JSONResponse(
            {"pipeline_id": pid, "layers": result["layers"], "status_url": f"/v1/pipelines/{pid}"},
            status_code=202,
        )

    @app.get("/v1/pipelines", dependencies=[viewer])
    async def list_pipelines(
        request: Request,
        status: str | None = None,
        limit: int = Query(50, ge=1, le=500),
    ) -> Any:
        """The latest pipelines, newest first (optionally of one status)."""
        return await alist_pipelines(request.app.state.pool, status=status, limit=limit)

    @app.get("/v1/pipelines/{pipeline_id}", dependencies=[viewer])
    async def pipeline_status(request: Request, pipeline_id: str) -> Any:
        """Status and, per stage: status, attempt, task id, agent, times, outputs, error."""
        return await existing(request, pipeline_id)

    @app.get("/v1/pipelines/{pipeline_id}/events", dependencies=[viewer])
    async def follow(request: Request, pipeline_id: str) -> StreamingResponse:
        """Server-sent events: the pipeline's status each time it changes (``event: status``),
        until it ends. A pipeline not projected yet (just submitted) is waited for."""
        pool = request.app.state.pool

        async def stream() -> AsyncIterator[bytes]:
            last: bytes | None = None
            quiet = 0.0
            while not await request.is_disconnected():
                status = await aget_pipeline_status(pipeline_id, db=pool)
                doc = _json(status) if status is not None else None
                if doc is not None and doc != last:
                    last, quiet = doc, 0.0
                    yield b"event: status\ndata: " + doc + b"\n\n"
                    if status is not None and status["status"] in TERMINAL:
                        return
                elif quiet >= config.keepalive_s:
                    quiet = 0.0
                    yield b": keep-alive\n\n"
                await asyncio.sleep(config.poll_interval_s)
                quiet += config.poll_interval_s

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def accepted(pipeline_id: str, kind: str) -> JSONResponse:
        counts[f"command:{kind}"] += 1
        return JSONResponse({"accepted": kind, "pipeline_id": pipeline_id}, status_code=202)

    @app.post("/v1/pipelines/{pipeline_id}/resume", status_code=202)
    async def resume(request: Request, pipeline_id: str, by: Principal = submitter) -> JSONResponse:
        """Run again every failed, cancelled or lost stage (and what waits on them)."""
        await steerable(request, pipeline_id, by)
        await executor(request, pipeline_id, by).aresume()
        return accepted(pipeline_id, "ResumePipeline")

    @app.post("/v1/pipelines/{pipeline_id}/cancel", status_code=202)
    async def cancel(
        request: Request, pipeline_id: str, reason: str = "", by: Principal = submitter
    ) -> JSONResponse:
        await steerable(request, pipeline_id, by)
        await executor(request, pipeline_id, by).acancel(reason)
        return accepted(pipeline_id, "CancelPipeline")

    @app.post(
        "/v1/pipelines/{pipeline_id}/stages/{stage}/retry",
        status_code=202,
    )
    async def retry(
        request: Request, pipeline_id: str, stage: str, by: Principal = submitter
    ) -> JSONResponse:
        status = await steerable(request, pipeline_id, by)
        if stage not in {s["name"] for s in status["stages"]}:
            raise HTTPException(404, f"pipeline {pipeline_id!r} has no stage {stage!r}")
        await executor(request, pipeline_id, by).aretry_stage(stage)
        return accepted(pipeline_id, "RetryStage")

    @app.get("/v1/jobs/{job_id}/metrics", dependencies=[viewer])
    async def latest_metrics(
        request: Request, job_id: str, limit: int = Query(10, ge=1, le=1000)
    ) -> Any:
        """A training job's latest metric points, newest first."""
        points = await get_latest_metrics(job_id, limit, db=request.app.state.pool)
        return [
            {"source": p.source, "seq": p.seq, **p.point.model_dump(exclude_none=True)}
            for p in points
        ]

    @app.get("/v1/jobs/{job_id}/anomalies", dependencies=[viewer])
    async def job_anomalies(
        request: Request, job_id: str, limit: int = Query(1000, ge=1, le=10000)
    ) -> Any:
        """A training job's anomalies in step order, each with the actions taken on it
        (status: recommended, requested, applied or refused with the reason)."""
        found = await aget_anomalies(job_id=job_id, limit=limit, db=request.app.state.pool)
        return [a.to_dict() for a in found]

    @app.get("/v1/pipelines/{pipeline_id}/anomalies", dependencies=[viewer])
    async def pipeline_anomalies(
        request: Request,
        pipeline_id: str,
        stage: str | None = None,
        limit: int = Query(1000, ge=1, le=10000),
    ) -> Any:
        """The anomalies of every job of a pipeline (or of one stage), in step order, each with
        the actions taken on it. An unknown pipeline has none."""
        found = await aget_anomalies(
            pipeline_id=pipeline_id, stage=stage, limit=limit, db=request.app.state.pool
        )
        return [a.to_dict() for a in found]

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        """The web page: pipelines, a pipeline's stages by layer, live, with a job's metrics."""
        return HTMLResponse(_PAGE.read_bytes())

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> JSONResponse:
        try:
            await request.app.state.pool.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError) as exc:
            return JSONResponse({"status": "no database", "error": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> PlainTextResponse:
        text = Exposition("posttrain_gateway")
        text.add("up", "gauge", "1 while the gateway serves.", 1)
        text.add(
            "submissions_total",
            "counter",
            "Pipelines submitted, and refused with a 422.",
            [({"outcome": k}, counts[k]) for k in ("submitted", "rejected")],
        )
        text.add(
            "commands_total",
            "counter",
            "Control commands sent to the orchestrator, by type.",
            [
                ({"type": k.removeprefix("command:")}, v)
                for k, v in sorted(counts.items())
                if k.startswith("command:")
            ],
        )
        return PlainTextResponse(text.render(), media_type=CONTENT_TYPE)

    return app
