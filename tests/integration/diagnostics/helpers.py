"""What the diagnostics integration tests share: the stream as a real worker process, a real
HTTP receiver on loopback standing in for Slack/Feishu/a webhook, and topic readers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from posttrain.events.kafka import EventConsumer, KafkaSettings, Received


class StreamProcess:
    """``python -m posttrain.diagnostics.stream`` in the test's namespace."""

    def __init__(self, settings: KafkaSettings, config: dict[str, Any] | None, tmp: Path) -> None:
        self.env = dict(
            os.environ,
            KAFKA_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
            POSTTRAIN_TOPIC_NAMESPACE=settings.namespace,
            LOG_LEVEL="WARNING",
        )
        if config is not None:
            path = tmp / "diagnostics.json"
            path.write_text(json.dumps(config))
            self.env["POSTTRAIN_DIAGNOSTICS_CONFIG"] = str(path)
        self.log = tmp / "stream.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "posttrain.diagnostics.stream"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


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
