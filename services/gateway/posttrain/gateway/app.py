"""The HTTP API: submit pipelines (JSON or YAML, with an optional ``Idempotency-Key``), read
their status and history, follow them live (SSE, pushed by PostgreSQL LISTEN/NOTIFY), resume,
cancel, retry a stage, read the agents, a job's latest metrics and downsampled series, and the
anomalies kept for a job or a pipeline (with the actions taken on each); and a web page over it
(``/``).

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
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles

from posttrain.diagnostics.queries import aget_anomalies
from posttrain.events.kafka import EventProducer, KafkaSettings
from posttrain.gateway import idempotency
from posttrain.gateway.auth import ANONYMOUS_ADMIN, Principal, Role, authenticate
from posttrain.gateway.live import LiveHub
from posttrain.metrics_ingest.queries import UnknownField, get_latest_metrics, get_metric_series
from posttrain.orchestrator.client import (
    DocumentError,
    InvalidPipeline,
    PipelineExecutor,
    aget_pipeline_history,
    aget_pipeline_status,
    alast_history_seq,
    alist_agents,
    alist_pipelines,
    read_document,
)
from posttrain.service.prometheus import CONTENT_TYPE, Exposition

_STATIC = Path(__file__).parent / "static"
_PAGE = _STATIC / "index.html"
MAX_BODY_BYTES = 1 << 20
log = logging.getLogger("posttrain.gateway")
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "rejected"})
INT4_MAX = 2**31 - 1  # history and run numbers are PostgreSQL integers
INT8_MIN, INT8_MAX = -(2**63), 2**63 - 1  # steps are bigints
RUN_HELP = "a run of the job, from 1 (a job id reported again is a new run); the latest by default"


@dataclass(frozen=True)
class GatewayConfig:
    kafka: KafkaSettings
    database_url: str
    # False: no authentication, every caller an admin (an explicit choice: --no-auth). True:
    # bearer tokens from the gateway's table (``posttrain token create``).
    auth: bool = True
    keepalive_s: float = 15.0  # a comment line on a quiet stream, so proxies keep it open
    address: str | None = None  # where it serves (for its start line); None in-process


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


def _field_error(where: str, name: str, message: str) -> JSONResponse:
    """A 422 shaped like FastAPI's own validation errors, naming the field."""
    return JSONResponse(
        {"detail": [{"loc": [where, name], "msg": message, "type": "value_error"}]},
        status_code=422,
    )


def create_app(config: GatewayConfig) -> FastAPI:
    counts: Counter[str] = Counter()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from posttrain.service.migrate import apply_migrations

        # The gateway's own tables (idempotency keys); up to date already after a stack up.
        await apply_migrations(config.database_url, owner="gateway")
        app.state.pool = await asyncpg.create_pool(config.database_url, min_size=1, max_size=8)
        app.state.hub = LiveHub(config.database_url, app.state.pool)
        await app.state.hub.start()
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
            await app.state.hub.stop()
            await app.state.pool.close()
            log.info("gateway stopped", extra=identity)

    app = FastAPI(
        title="posttrain",
        summary="LLM post-training pipelines: submit, follow, control.",
        version="0.1.0",
        lifespan=lifespan,
    )

    @app.exception_handler(asyncpg.DataError)
    async def unstorable(request: Request, exc: asyncpg.DataError) -> JSONResponse:
        # A value PostgreSQL cannot take (a NUL character, a number out of its range) is the
        # caller's to fix, not a server error.
        return JSONResponse(
            {"detail": f"a value in the request cannot be read: {exc}"}, status_code=422
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

    async def cached(
        request: Request, pipeline_id: str, key: Any, load: Callable[[Any], Awaitable[Any]]
    ) -> Response:
        """A pipeline's document, read through the hub's cache (dropped at each change)."""
        hub: LiveHub = request.app.state.hub
        doc = await hub.cache.read(pipeline_id, key, lambda: load(request.app.state.pool))
        if doc is None:
            raise HTTPException(404, f"no pipeline {pipeline_id!r} (or not projected yet)")
        return Response(doc, media_type="application/json")

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
    async def submit(
        request: Request,
        by: Principal = submitter,
        idempotency_key: str | None = Header(
            default=None,
            min_length=1,
            max_length=200,
            description="Submitting again with the same key and body returns the first "
            "response and sends nothing; the same key with another body is a 409. Keys are "
            "per token.",
        ),
    ) -> JSONResponse:
        """Validate and submit a pipeline: a mapping with ``stages`` (and optional ``name``,
        ``settings``, ``pipeline_id``) as JSON, or as YAML with a YAML content type."""
        body = await _body(request)
        content_type = request.headers.get("content-type", "application/json")
        if idempotency_key is None:
            status, doc = await submit_document(request, body, content_type, by)
            return JSONResponse(doc, status_code=status)
        pool = request.app.state.pool
        # Keys are per token: another caller's key never answers for this one.
        key = f"{by.name}\n{idempotency_key}"
        digest = idempotency.request_digest(content_type, body)
        try:
            stored = await idempotency.claim(pool, key, digest)
        except idempotency.KeyReused:
            raise HTTPException(
                409, "this Idempotency-Key was used with another request body"
            ) from None
        except idempotency.KeyInFlight:
            raise HTTPException(
                409, "a request with this Idempotency-Key is still being processed: retry"
            ) from None
        if stored is not None:
            counts["replayed"] += 1
            return JSONResponse(
                stored.body, status_code=stored.status, headers={"Idempotent-Replayed": "true"}
            )
        try:
            status, doc = await submit_document(request, body, content_type, by)
        except BaseException:
            await idempotency.release(pool, key)
            raise
        await idempotency.store(pool, key, status, doc)
        return JSONResponse(doc, status_code=status)

    async def submit_document(
        request: Request, body: bytes, content_type: str, by: Principal
    ) -> tuple[int, dict[str, Any]]:
        def invalid(errors: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
            counts["rejected"] += 1
            return 422, {"detail": "invalid pipeline", "errors": errors}

        try:
            doc = read_document(body, content_type)
        except DocumentError as exc:
            return invalid([{"stage": None, "field": exc.field, "message": exc.message}])
        pipeline = executor(request, doc.pipeline_id, by)
        try:
            result = await pipeline.aexecute(doc.stages, name=doc.name, settings=doc.settings)
        except InvalidPipeline as exc:
            return invalid([e.as_dict() for e in exc.errors])
        counts["submitted"] += 1
        pid = result["pipeline_uuid"]
        return 202, {
            "pipeline_id": pid,
            "layers": result["layers"],
            "status_url": f"/v1/pipelines/{pid}",
        }

    @app.get("/v1/pipelines", dependencies=[viewer])
    async def list_pipelines(
        request: Request,
        status: str | None = None,
        limit: int = Query(50, ge=1, le=500),
    ) -> Any:
        """The latest pipelines, newest first (optionally of one status)."""
        return await alist_pipelines(request.app.state.pool, status=status, limit=limit)

    @app.get("/v1/pipelines/{pipeline_id}", dependencies=[viewer])
    async def pipeline_status(request: Request, pipeline_id: str) -> Response:
        """Status and, per stage: status, attempt, task id, agent, times, outputs, error."""
        return await cached(
            request, pipeline_id, "status", lambda db: aget_pipeline_status(pipeline_id, db=db)
        )

    @app.get("/v1/pipelines/{pipeline_id}/history", dependencies=[viewer])
    async def pipeline_history(
        request: Request,
        pipeline_id: str,
        after: int | None = Query(None, ge=0, le=INT4_MAX, description="entries numbered above"),
        limit: int = Query(100, ge=1, le=1000),
    ) -> Response:
        """The pipeline's events in order, each with its number (``seq``), time, type, stage,
        attempt, a one-line summary and its data: decisions, retries, losses, actions (with the
        anomaly they answer) and refused commands. Page on with ``after=next_after``."""
        return await cached(
            request,
            pipeline_id,
            ("history", after, limit),
            lambda db: aget_pipeline_history(pipeline_id, after=after, limit=limit, db=db),
        )

    @app.get("/v1/pipelines/{pipeline_id}/events", dependencies=[viewer])
    async def follow(
        request: Request,
        pipeline_id: str,
        after: int | None = Query(
            None, ge=0, le=INT4_MAX, description="send the history entries numbered above"
        ),
        last_event_id: str | None = Header(default=None, max_length=20),
    ) -> StreamingResponse:
        """Server-sent events, pushed as they happen: ``status`` (the whole status document,
        at each change), ``history`` (each new history entry; its ``id`` is the entry's
        number), ``metrics`` (``{"job_uuid", "step"}`` when points of one of the pipeline's
        jobs are stored) and ``anomaly`` (each anomaly kept for it). The stream ends with the
        pipeline. History starts after ``after`` (or the ``Last-Event-ID`` a reconnecting
        client sends), by default after the entries that exist now. A pipeline not projected
        yet (just submitted) is waited for."""
        if after is None and last_event_id is not None and last_event_id.isdigit():
            after = min(int(last_event_id), INT4_MAX)
        pool = request.app.state.pool
        start = after if after is not None else await alast_history_seq(pipeline_id, db=pool)
        hub: LiveHub = request.app.state.hub

        async def stream() -> AsyncIterator[bytes]:
            with hub.subscribe(pipeline_id, start) as sub:
                while not sub.overflowed:
                    try:
                        event, data, seq = await asyncio.wait_for(
                            sub.queue.get(), config.keepalive_s
                        )
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield b": keep-alive\n\n"
                        continue
                    head = b"event: " + event.encode() + b"\n"
                    if seq is not None:
                        head += b"id: %d\n" % seq
                    yield head + b"data: " + data + b"\n\n"
                    if event == "status" and orjson.loads(data)["status"] in TERMINAL:
                        return

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
        request: Request,
        job_id: str,
        limit: int = Query(10, ge=1, le=1000),
        run: int | None = Query(None, ge=1, le=INT4_MAX, description=RUN_HELP),
    ) -> Any:
        """A training job's latest metric points, newest first."""
        points = await get_latest_metrics(job_id, limit, run=run, db=request.app.state.pool)
        return [
            {"source": p.source, "seq": p.seq, **p.point.model_dump(exclude_none=True)}
            for p in points
        ]

    @app.get("/v1/jobs/{job_id}/series", dependencies=[viewer])
    async def metric_series(
        request: Request,
        job_id: str,
        fields: str = Query(
            "loss",
            min_length=1,
            max_length=2000,
            description="comma-separated: canonical names, epoch, or custom.<key>",
        ),
        points: int = Query(500, ge=1, le=5000, description="at most this many buckets"),
        step_from: int | None = Query(None, ge=INT8_MIN, le=INT8_MAX),
        step_to: int | None = Query(None, ge=INT8_MIN, le=INT8_MAX),
        run: int | None = Query(None, ge=1, le=INT4_MAX, description=RUN_HELP),
    ) -> Any:
        """Chosen fields of a job for a chart, downsampled in PostgreSQL to at most ``points``
        buckets of equal step width: per bucket its first step and each field's mean of finite
        values. NaN and infinite values are null there, and their steps are listed per field
        under ``non_finite``."""
        names = [name.strip() for name in fields.split(",") if name.strip()]
        if not names:
            return _field_error("query", "fields", "name at least one field")
        try:
            return await get_metric_series(
                job_id,
                names,
                points=points,
                step_from=step_from,
                step_to=step_to,
                run=run,
                db=request.app.state.pool,
            )
        except UnknownField as exc:
            return _field_error("query", "fields", str(exc))

    @app.get("/v1/agents", dependencies=[viewer])
    async def agents(request: Request) -> Any:
        """Every agent: labels, GPUs (total and free), stage slots, the stages it runs, its
        last heartbeat, and whether it is alive (heard from within the orchestrator's silence
        interval)."""
        return {"agents": await alist_agents(db=request.app.state.pool)}

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
        """The web page (no build step: ES modules and a style sheet under /static): pipelines,
        a pipeline's DAG live at /#/pipelines/{id}, a stage at .../stages/{name} with its job's
        metric charts, anomalies and history, the agents, submit, token entry."""
        return HTMLResponse(_PAGE.read_bytes())

    # The page's scripts and style sheet: public, like the page; the data behind them is not.
    app.mount("/static", StaticFiles(directory=_STATIC), name="static")

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> JSONResponse:
        try:
            await request.app.state.pool.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError) as exc:
            return JSONResponse({"status": "no database", "error": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> PlainTextResponse:
        text = Exposition("posttrain_gateway")
        text.add("up", "gauge", "1 while the gateway serves.", 1)
        text.add(
            "submissions_total",
            "counter",
            "Pipelines submitted, and refused with a 422.",
            [({"outcome": k}, counts[k]) for k in ("submitted", "rejected", "replayed")],
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
        hub: LiveHub = request.app.state.hub
        text.add("live_streams", "gauge", "Server-sent event streams open.", hub.streams)
        text.add(
            "live_listening",
            "gauge",
            "1 while the gateway hears PostgreSQL notifications (live updates flow).",
            int(hub.listening),
        )
        text.add(
            "notifications_total",
            "counter",
            "PostgreSQL notifications heard for live streams.",
            hub.notifications,
        )
        text.add(
            "cache_hits_total",
            "counter",
            "Status and history reads answered from memory (dropped at each change).",
            hub.cache.hits,
        )
        return PlainTextResponse(text.render(), media_type=CONTENT_TYPE)

    return app
