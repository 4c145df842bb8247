"""The service's HTTP side: ``GET /healthz``, ``GET /metrics`` (Prometheus), ``POST /flush``,
served by ``posttrain.service.http``."""

from __future__ import annotations

import orjson

from posttrain.metrics_ingest.service import IngestService
from posttrain.metrics_ingest.stats import render_prometheus
from posttrain.service.http import Handler, Response, only
from posttrain.service.prometheus import CONTENT_TYPE

# A reader that has not polled for this long is stuck (a poll returns at least every 100 ms).
STUCK_AFTER_S = 30.0


def routes(service: IngestService) -> dict[str, Handler]:
    """The ingest service's routes, for ``posttrain.service.http.EndpointServer``."""

    async def healthz(method: str) -> Response:
        health = service.health()
        # Failing only when restarting would help: a task died or the reader is stuck.
        # PostgreSQL being down is reported (database_up) but is not this process's fault.
        # Starting until the group has assigned this instance its partitions.
        live = health["alive"] and health["seconds_since_poll"] < STUCK_AFTER_S
        ok = live and health["ready"]
        health["status"] = "ok" if ok else ("starting" if live else "failing")
        return (200 if ok else 503), "application/json", orjson.dumps(health)

    async def metrics(method: str) -> Response:
        text = render_prometheus(service.stats, await service.lag(), service._clock())
        return 200, CONTENT_TYPE, text.encode()

    async def flush(method: str) -> Response:
        try:
            rows = await service.flush(timeout_s=60)
        except TimeoutError:
            return 503, "application/json", orjson.dumps({"error": "flush timed out"})
        return 200, "application/json", orjson.dumps({"rows_inserted": rows})

    return {
        "/healthz": only("GET", healthz),
        "/metrics": only("GET", metrics),
        "/flush": only("POST", flush),
    }
