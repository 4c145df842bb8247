"""The service's HTTP side: ``GET /healthz``, ``GET /metrics`` (Prometheus), ``POST /flush``.

A few lines of asyncio rather than a web framework: three fixed routes, no bodies to parse,
and nothing more to install on the ingest hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson

from posttrain.metrics_ingest.service import IngestService
from posttrain.metrics_ingest.stats import render_prometheus

log = logging.getLogger(__name__)

# A reader that has not polled for this long is stuck (a poll returns at least every 100 ms).
STUCK_AFTER_S = 30.0
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HttpEndpoints:
    def __init__(self, service: IngestService, host: str = "127.0.0.1", port: int = 9464) -> None:
        self.service = service
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Start listening; returns the port (useful with port 0)."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            status, content_type, body = await self._route(method, path.split("?", 1)[0])
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            writer.close()
            return
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def _route(self, method: str, path: str) -> tuple[int, str, bytes]:
        service = self.service
        if path == "/healthz":
            health = service.health()
            # Unhealthy only when restarting would help: a task died or the reader is stuck.
            # PostgreSQL being down is reported (database_up) but is not this process's fault.
            ok = health["alive"] and health["seconds_since_poll"] < STUCK_AFTER_S
            health["status"] = "ok" if ok else "failing"
            return (200 if ok else 503), "application/json", orjson.dumps(health)
        if path == "/metrics":
            text = render_prometheus(service.stats, await service.lag(), service._clock())
            return 200, "text/plain; version=0.0.4; charset=utf-8", text.encode()
        if path == "/flush":
            if method != "POST":
                return 405, "text/plain", b"POST /flush\n"
            try:
                rows = await service.flush(timeout_s=60)
            except TimeoutError:
                return 503, "application/json", orjson.dumps({"error": "flush timed out"})
            return 200, "application/json", orjson.dumps({"rows_inserted": rows})
        return 404, "text/plain", b"not found\n"
