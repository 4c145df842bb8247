"""The orchestrator's HTTP side: ``GET /healthz`` and ``GET /metrics`` (Prometheus text),
served by ``posttrain.service.http``."""

from __future__ import annotations

import time

import orjson

from posttrain.orchestrator.shell.service import Orchestrator
from posttrain.orchestrator.shell.stats import health, pipelines_by_status, render_prometheus
from posttrain.service.http import Handler, Response, only
from posttrain.service.prometheus import CONTENT_TYPE


def routes(orchestrator: Orchestrator) -> dict[str, Handler]:
    """The orchestrator's routes, for ``posttrain.service.http.EndpointServer``."""

    async def healthz(method: str) -> Response:
        pipelines = sum(len(by_pipeline) for by_pipeline in orchestrator.states.values())
        ok, doc = health(orchestrator.stats, orchestrator.partitions, pipelines, time.monotonic())
        return (200 if ok else 503), "application/json", orjson.dumps(doc)

    async def metrics(method: str) -> Response:
        # One pass over the pipelines in memory, here rather than in the loop: a scrape every
        # few seconds costs less than keeping the counts up to date on every event.
        by_status = pipelines_by_status(orchestrator.states.values())
        text = render_prometheus(
            orchestrator.stats, orchestrator.partitions, by_status, time.monotonic()
        )
        return 200, CONTENT_TYPE, text.encode()

    return {"/healthz": only("GET", healthz), "/metrics": only("GET", metrics)}
