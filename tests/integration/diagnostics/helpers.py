"""What the diagnostics integration tests share: the stream as a real worker process, a real
HTTP receiver on loopback standing in for Slack/Feishu/a webhook, and topic readers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from posttrain.events.kafka import EventConsumer, KafkaSettings, Received
from posttrain.testing import services


def StreamProcess(
    settings: KafkaSettings, config: dict[str, Any] | None, tmp: Path
) -> services.ServiceProcess:
    """``python -m posttrain.diagnostics.stream`` in the test's namespace, with ``config`` as
    its POSTTRAIN_DIAGNOSTICS_CONFIG; ``await stream.wait_ready()`` after ``start()``."""
    path = None
    if config is not None:
        path = tmp / "diagnostics.json"
        path.write_text(json.dumps(config))
    return services.diagnostics(
        settings, tmp / "stream.log", config=path, env={"LOG_LEVEL": "WARNING"}
    )


@dataclass
class Receiver:
    """A loopback HTTP server that records what each path received and answers as told."""

    requests: dict[str, list[tuple[dict[str, str], bytes]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    # path -> statuses to answer in turn (then 200)
    script: dict[str, list[int]] = field(default_factory=dict)
    feishu_secret: str | None = None
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{name:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["name"]
        body = await request.read()
        self.requests[path].append((dict(request.headers), body))
        queued = self.script.get(path)
        if queued:
            status = queued.pop(0)
            return web.Response(status=status, text="unavailable")
        if path.startswith("/feishu"):
            return web.json_response(self._feishu_answer(body))
        if path.startswith("/slack"):
            return web.Response(text="ok")
        return web.json_response({"received": True})

    def _feishu_answer(self, body: bytes) -> dict[str, Any]:
        doc = json.loads(body)
        if self.feishu_secret is not None:
            # Feishu's documented check, written out independently of the code under test.
            to_sign = f"{doc.get('timestamp')}\n{self.feishu_secret}".encode()
            expected = base64.b64encode(
                hmac.new(to_sign, digestmod=hashlib.sha256).digest()
            ).decode()
            if doc.get("sign") != expected:
                return {"code": 19021, "msg": "sign match fail or timestamp is not within one hour"}
        return {"code": 0, "msg": "success", "data": {}}

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(b) for _, b in self.requests.get(path, [])]


async def read_all(consumer: EventConsumer, into: list[Received]) -> list[Received]:
    into.extend(await consumer.getmany(timeout_ms=200))
    return into
