"""A few fixed HTTP routes over asyncio: what a service needs for ``/healthz`` and ``/metrics``.

No web framework: a service answers a probe and a scrape (and the odd ``POST`` that triggers
something), and a GPU node should not need a framework installed for that. One request per
connection (``Connection: close``), request bodies are never read, and a client that is slow,
sends too much or sends something that is not HTTP is simply disconnected: whatever a client
does, it cannot hold the service up.

    server = EndpointServer({"/healthz": only("GET", healthz)}, "127.0.0.1", 0)
    port = await server.start()  # the port bound (port 0: any free one)
    ...
    await server.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus

log = logging.getLogger(__name__)

Response = tuple[int, str, bytes]
"""What a handler answers: status, content type, body."""

Handler = Callable[[str], Awaitable[Response]]
"""A route's handler: gets the request method (``GET``, ``POST``, ...), answers a response."""

# A probe's or a scraper's request is a few hundred bytes; anything near this is not one.
MAX_REQUEST_HEAD = 16 * 1024
READ_TIMEOUT_S = 10.0
TEXT = "text/plain; charset=utf-8"


def parse_address(value: str) -> tuple[str, int] | None:
    """A service's ``--http`` value: ``host:port`` (port 0: any free port; no host: 127.0.0.1;
    an IPv6 host in brackets), or ``off`` for no server (None). ``ValueError`` otherwise."""
    if value == "off":
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected host:port or 'off', not {value!r}")
    return host.removeprefix("[").removesuffix("]") or "127.0.0.1", int(port)


def only(method: str, handler: Handler) -> Handler:
    """``handler`` for requests with ``method``; 405 for any other method."""

    async def route(request_method: str) -> Response:
        if request_method != method:
            return 405, TEXT, f"{method} only\n".encode()
        return await handler(request_method)

    return route


class EndpointServer:
    """Serves ``routes`` (path -> handler; the query string is ignored) on ``host:port``.

    An unknown path is 404; a handler that raises is 500 (and logged): a bug behind one route
    must not take the server down or leave the client waiting."""

    def __init__(
        self,
        routes: Mapping[str, Handler],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self.routes = dict(routes)
        self.host = host
        self.port = port
        self.read_timeout_s = read_timeout_s
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[object]] = set()

    async def start(self) -> int:
        """Start listening; returns the port bound (the one asked for, or any free one for 0).

        Raises ``OSError`` when the address is taken: whether that is fatal is the caller's."""
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, limit=MAX_REQUEST_HEAD
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Stop listening and drop the connections still open (a client still sending its
        request would otherwise hold ``stop`` for up to the read timeout)."""
        if self._server is None:
            return
        self._server.close()
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.read_timeout_s)
                method, target = _request_line(head)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
                log.debug("http request not read", extra={"error": repr(exc)})
                return
            except ValueError as exc:
                log.debug("malformed http request", extra={"error": str(exc)})
                return
            status, content_type, body = await self._respond(method, target.split("?", 1)[0])
            writer.write(_head(status, content_type, len(body)) + body)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)

    async def _respond(self, method: str, path: str) -> Response:
        handler = self.routes.get(path)
        if handler is None:
            return 404, TEXT, b"not found\n"
        try:
            return await handler(method)
        except Exception:
            log.exception("http handler failed", extra={"path": path, "method": method})
            return 500, TEXT, b"internal error\n"


def _request_line(head: bytes) -> tuple[str, str]:
    """The method and target of ``METHOD TARGET HTTP/x.y``; ``ValueError`` for anything else."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/") or not parts[1].startswith("/"):
        raise ValueError(f"not an HTTP request line: {line[:80]!r}")
    return parts[0], parts[1]


def _head(status: int, content_type: str, length: int) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    return (
        f"HTTP/1.1 {status} {reason}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
