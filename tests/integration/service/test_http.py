"""The endpoint server on a real socket: routes, 404/405/500, and clients that misbehave."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio

from posttrain.service.http import EndpointServer, Response, only


async def _hello(method: str) -> Response:
    return 200, "text/plain", f"hello {method}\n".encode()


async def _broken(method: str) -> Response:
    raise RuntimeError("a bug behind one route")


@pytest_asyncio.fixture
async def server() -> AsyncIterator[EndpointServer]:
    server = EndpointServer(
        {"/hello": _hello, "/get": only("GET", _hello), "/broken": _broken},
        port=0,
        read_timeout_s=0.5,
    )
    await server.start()
    yield server
    await server.stop()


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def _request(port: int, method: str, target: str) -> tuple[int, dict[str, str], bytes]:
    response = await _exchange(port, f"{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body


async def test_port_0_binds_a_free_port_and_a_route_answers_with_its_method(server) -> None:
    assert server.port > 0
    status, headers, body = await _request(server.port, "POST", "/hello?x=1")
    assert (status, body) == (200, b"hello POST\n")
    assert headers["Content-Type"] == "text/plain"
    assert headers["Content-Length"] == str(len(body))
    assert headers["Connection"] == "close"


async def test_unknown_path_is_404_and_a_method_a_route_does_not_take_is_405(server) -> None:
    assert (await _request(server.port, "GET", "/nothing"))[0] == 404
    assert (await _request(server.port, "POST", "/get"))[0:3:2] == (405, b"GET only\n")
    assert (await _request(server.port, "GET", "/get"))[0] == 200


async def test_a_handler_that_raises_is_500_and_the_server_goes_on(server) -> None:
    assert (await _request(server.port, "GET", "/broken"))[0] == 500
    assert (await _request(server.port, "GET", "/hello"))[0] == 200


async def test_what_is_not_http_closes_the_connection_without_an_answer(server) -> None:
    assert await _exchange(server.port, b"hello there\r\n\r\n") == b""
    assert await _exchange(server.port, b"GET /hello\r\n\r\n") == b""
    assert await _exchange(server.port, b"GET " + b"x" * 20_000 + b" HTTP/1.1\r\n\r\n") == b""
    assert (await _request(server.port, "GET", "/hello"))[0] == 200


async def test_a_client_that_never_finishes_its_request_is_disconnected(server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /hello HTTP/1.1\r\n")  # ... and nothing more
        await writer.drain()
        # Closed by the server after its read timeout (0.5 s here): EOF, no answer.
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


async def test_stop_does_not_wait_for_a_silent_client() -> None:
    server = EndpointServer({"/hello": _hello}, port=0)  # the default read timeout: 10 s
    port = await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await asyncio.sleep(0)  # let the server accept it
        await asyncio.wait_for(server.stop(), 2)
        assert await asyncio.wait_for(reader.read(), 2) == b""
    finally:
        writer.close()
    # And the port is free again.
    again = EndpointServer({"/hello": _hello}, port=port)
    assert await again.start() == port
    await again.stop()
