"""Services as real processes, for tests, benchmarks and the demo: start one on a broker and
namespace with a /healthz port of its own, wait until it says it is ready (its consumers own
their partitions and fetch), stop it.

Readiness is the service's own answer, never a sleep: a service that answers 200 on /healthz
reads what is sent to it from then on. A process that exits while it is awaited fails the wait
at once, with the end of its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.events.kafka import KafkaSettings

BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 120.0


_handed_out: set[int] = set()  # ports free_port returned in this process
_handing_out = threading.Lock()


def free_port() -> int:
    """A loopback port nothing listens on now (the caller's service binds it next), never one
    this process was given before: the kernel may offer a port it just gave, while the first
    service is still starting, and a service started meanwhile on the same port answered the
    other's readiness probe (the trainer agent's /healthz passed for a gateway that then failed
    to bind)."""
    with _handing_out:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port


def kafka_env(settings: KafkaSettings, database_url: str | None = None) -> dict[str, str]:
    """This process's environment, pointed at ``settings``' broker, namespace and credentials
    (and database: in the environment, never on the command line, where its password would
    show)."""
    env = {**os.environ, **settings.environment()}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return env


class NotReady(AssertionError):
    """A service did not say it was ready in time, or exited first."""


def http_json(
    url: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    *,
    timeout: float = 10.0,
) -> tuple[int, Any]:
    """(status, decoded body) of a GET (or a POST of ``body``): an error status's body too, as
    text when it is not JSON. OSError when nothing answers, ValueError for a success whose
    body is not JSON."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw or b"null")
        except ValueError:
            return exc.code, raw.decode(errors="replace")


@dataclass
class ServiceProcess:
    """One service process, its output appended to ``log``, its /healthz on ``port``."""

    name: str
    argv: list[str]
    log: Path
    env: Mapping[str, str] | None = None
    port: int | None = None
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> ServiceProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            # A session of its own: stopping it stops whatever it started (stage processes).
            self.process = subprocess.Popen(
                self.argv,
                env=dict(self.env) if self.env is not None else None,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ValueError(f"{self.name} was not started")
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def health(self) -> tuple[int, dict[str, Any]] | None:
        """(status, document) from /healthz, or None while nothing answers."""
        if self.port is None:
            raise ValueError(f"{self.name} has no /healthz port")
        try:
            status, doc = http_json(f"http://127.0.0.1:{self.port}/healthz", timeout=2)
        except (OSError, ValueError):
            return None
        return status, {} if doc is None else doc if isinstance(doc, dict) else {"body": doc}

    async def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """Wait until /healthz answers 200; its document. Fails at once if the process exits."""
        deadline = time.monotonic() + timeout
        last: tuple[int, dict[str, Any]] | None = None
        while True:
            if not self.running:
                raise NotReady(
                    f"{self.name} exited (code {self._code()}) before it was ready\n{self.tail()}"
                )
            last = await asyncio.to_thread(self.health)
            if last is not None and last[0] == 200:
                return last[1]
            if time.monotonic() >= deadline:
                raise NotReady(
                    f"{self.name} was not ready after {timeout:.0f} s (last /healthz: {last})"
                    f"\n{self.tail()}"
                )
            await asyncio.sleep(0.1)

    def _code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to its session, SIGKILL after ``timeout``."""
        self._signal(signal.SIGTERM)
        if self.process is not None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(30)

    def _signal(self, sig: int) -> None:
        if self.running:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def tail(self, chars: int = 3000) -> str:
        if not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")[-chars:]


def stop_all(services: Iterable[ServiceProcess], timeout: float = 30.0) -> None:
    """SIGTERM to all at once, then wait for each (SIGKILL past the shared deadline)."""
    services = list(services)
    for service in services:
        service._signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for service in services:
        if service.process is None:
            continue
        try:
            service.process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            service.kill()


# --- the platform's services ----------------------------------------------------------------


def orchestrator(
    settings: KafkaSettings,
    log: Path,
    *,
    database_url: str | None = None,
    port: int | None = None,
    tick_interval_s: float = 0.2,
    extra: Iterable[str] = (),
) -> ServiceProcess:
    """``python -m posttrain.orchestrator``: without ``database_url`` no read model is
    projected (never into the default database by accident)."""
    port = free_port() if port is None else port
    argv = [
        sys.executable,
        "-m",
        "posttrain.orchestrator",
        "--tick-interval",
        str(tick_interval_s),
        "--http",
        f"127.0.0.1:{port}",
        "--replay-processes",
        "0",
    ]
    if not database_url:
        argv.append("--no-projection")
    return ServiceProcess(
        "orchestrator", [*argv, *extra], log, kafka_env(settings, database_url), port
    )


def diagnostics(
    settings: KafkaSettings,
    log: Path,
    *,
    config: Path | None = None,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> ServiceProcess:
    """``python -m posttrain.diagnostics.stream`` with its web port for /healthz."""
    port = free_port() if port is None else port
    environ = kafka_env(settings)
    environ["POSTTRAIN_DIAGNOSTICS_WEB_PORT"] = str(port)
    if config is not None:
        environ["POSTTRAIN_DIAGNOSTICS_CONFIG"] = str(config)
    environ.update(env or {})
    argv = [sys.executable, "-m", "posttrain.diagnostics.stream"]
    return ServiceProcess("diagnostics", argv, log, environ, port)


def ingest(
    settings: KafkaSettings,
    database_url: str,
    log: Path,
    *,
    port: int | None = None,
    extra: Iterable[str] = (),
) -> ServiceProcess:
    """``python -m posttrain.metrics_ingest`` writing into ``database_url``."""
    port = free_port() if port is None else port
    argv = [sys.executable, "-m", "posttrain.metrics_ingest", "--http", f"127.0.0.1:{port}"]
    argv += extra
    return ServiceProcess("metrics-ingest", argv, log, kafka_env(settings, database_url), port)


def agent(
    settings: KafkaSettings,
    log: Path,
    *,
    name: str,
    work_dir: Path,
    slots: int = 2,
    gpus: int = 0,
    port: int | None = None,
    cwd: Path | None = None,
    extra: Iterable[str] = (),
) -> ServiceProcess:
    """``posttrain-agent`` named ``name``: ready once it has sent its first heartbeat."""
    port = free_port() if port is None else port
    argv = [
        str(BIN / "posttrain-agent"),
        "--name",
        name,
        "--gpus",
        str(gpus),
        "--slots",
        str(slots),
        "--work-dir",
        str(work_dir),
        "--http-port",
        str(port),
        *extra,
    ]
    return ServiceProcess(f"agent {name}", argv, log, kafka_env(settings), port, cwd)


def recorder(
    settings: KafkaSettings, database_url: str, log: Path, *, port: int | None = None
) -> ServiceProcess:
    """``posttrain-diagnostics-recorder``: keeps anomalies and actions in ``database_url``."""
    port = free_port() if port is None else port
    argv = [
        str(BIN / "posttrain-diagnostics-recorder"),
        "--http",
        f"127.0.0.1:{port}",
    ]
    return ServiceProcess("recorder", argv, log, kafka_env(settings, database_url), port)


def gateway(
    settings: KafkaSettings,
    database_url: str,
    log: Path,
    *,
    port: int | None = None,
    auth: bool = False,
    env: Mapping[str, str] | None = None,
) -> ServiceProcess:
    """``python -m posttrain.gateway`` on ``port``: reads ``database_url``, sends to
    ``settings``' namespace; its API, /healthz and /metrics share the port. ``--no-auth``
    unless ``auth``: then callers need tokens made in ``database_url``. ``env`` adds to its
    environment."""
    port = free_port() if port is None else port
    argv = [
        sys.executable,
        "-m",
        "posttrain.gateway",
        *([] if auth else ["--no-auth"]),
        "--port",
        str(port),
    ]
    environ = {**kafka_env(settings, database_url), **(env or {})}
    return ServiceProcess("gateway", argv, log, environ, port)
