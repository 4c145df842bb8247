"""The whole platform as real processes, for the resilience suite (tests/chaos): N instances of
each service and M trainer agents on one topic namespace and one database, any one of which can
be killed with SIGKILL and started again; and a private Kafka broker and PostgreSQL server of
the suite's own, started, stopped and restarted by the local stack's own code
(``posttrain.stack.commands``) on their own data directory and ports, so that the shared stack
everyone else uses is never touched.

Every process of a slot (one instance of one service) appends to the same log, and a restarted
agent reuses its name and work directory, so it re-attaches to the stage processes its killed
predecessor left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from posttrain.events.kafka import KafkaSettings
from posttrain.testing import services
from posttrain.testing.services import ServiceProcess, free_port
from posttrain.testing.services import http_json as http_json  # the gateway, as a caller sees it

ROOT = Path(__file__).resolve().parents[3]
WITNESS_ENV = "POSTTRAIN_STAGE_WITNESS_DIR"
# Heartbeats each second; an agent counts as lost after this many silent intervals. Longer than
# a killed agent takes to start again on a loaded 2-core machine, so that a kill -9 of an agent
# tests re-attachment, not only the retry of a lost stage.
AGENT_HEARTBEAT_S = 1.0
SILENCE_INTERVALS = 20


@dataclass
class Slot:
    """One instance of one service: what starts it, and every process it has had."""

    name: str
    make: Callable[[], ServiceProcess]
    processes: list[ServiceProcess] = field(default_factory=list)
    kills: int = 0
    # False once killed for good (scale-out: the other instance takes its partitions).
    wanted: bool = True
    # Killed on purpose and not started again yet.
    down: bool = False
    # The current process has answered ready (200 on /healthz) at least once.
    ready_seen: bool = False
    # Processes that exited before they were ever ready, started again (restart: on-failure).
    start_failures: int = 0

    @property
    def current(self) -> ServiceProcess:
        return self.processes[-1]

    def start(self) -> ServiceProcess:
        process = self.make().start()
        self.processes.append(process)
        self.down = False
        self.ready_seen = False
        return process

    def kill(self) -> None:
        """SIGKILL to the service's process group. An agent's stage processes are sessions of
        their own: they run on, as on a node whose agent crashed."""
        self.current.kill()
        self.kills += 1
        self.down = True


@dataclass
class Platform:
    """``orchestrators``/``ingests``/``diagnostics``/``gateways`` instances and ``agents`` agents
    on ``settings``' namespace and ``database_url``. Logs, agent work directories, the
    diagnostics configuration and the stage witness file live under ``root``."""

    settings: KafkaSettings
    database_url: str
    root: Path
    orchestrators: int = 1
    ingests: int = 1
    diagnostics: int = 1
    gateways: int = 1
    agents: int = 2
    diagnostics_config: dict[str, Any] | None = None
    slots: dict[str, Slot] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.witness_dir.mkdir(parents=True, exist_ok=True)
        config_path: Path | None = None
        if self.diagnostics_config is not None:
            config_path = self.root / "diagnostics.json"
            config_path.write_text(json.dumps(self.diagnostics_config))
        logs = self.root / "logs"
        for i in range(self.orchestrators):
            self._add(f"orchestrator-{i}", partial(self._orchestrator, logs, i))
        for i in range(self.ingests):
            self._add(f"ingest-{i}", partial(self._ingest, logs, i))
        for i in range(self.diagnostics):
            self._add(f"diagnostics-{i}", partial(self._diagnostics, logs, i, config_path))
        for i in range(self.gateways):
            # One port for good: callers keep a restarted gateway's address.
            self._add(f"gateway-{i}", partial(self._gateway, logs, i, free_port()))
        for i in range(self.agents):
            self._add(f"agent-{i}", partial(self._agent, logs, i))

    def _add(self, name: str, make: Callable[[], ServiceProcess]) -> None:
        self.slots[name] = Slot(name, make)

    def _orchestrator(self, logs: Path, i: int) -> ServiceProcess:
        return services.orchestrator(
            self.settings,
            logs / f"orchestrator-{i}.log",
            database_url=self.database_url,
            extra=(
                "--silence-intervals",
                str(SILENCE_INTERVALS),
                "--session-timeout-ms",
                "3000",
            ),
        )

    def _diagnostics(self, logs: Path, i: int, config: Path | None) -> ServiceProcess:
        return services.diagnostics(
            self.settings,
            logs / f"diagnostics-{i}.log",
            config=config,
            # A killed instance's partitions move to the other within seconds.
            env={"POSTTRAIN_DIAGNOSTICS_SESSION_TIMEOUT_S": "3"},
        )

    def _gateway(self, logs: Path, i: int, port: int) -> ServiceProcess:
        return services.gateway(
            self.settings, self.database_url, logs / f"gateway-{i}.log", port=port
        )

    def _ingest(self, logs: Path, i: int) -> ServiceProcess:
        return services.ingest(
            self.settings,
            self.database_url,
            logs / f"ingest-{i}.log",
            extra=("--preset", "low-latency", "--session-timeout-ms", "3000"),
        )

    def _agent(self, logs: Path, i: int) -> ServiceProcess:
        process = services.agent(
            self.settings,
            logs / f"agent-{i}.log",
            name=f"chaos-agent-{i}",
            work_dir=self.root / "agents" / f"agent-{i}",
            slots=1,
            cwd=ROOT,
            # No zygote: each agent's would import the training libraries at once, at start
            # and again after each kill, which on a loaded 2-core machine holds the first
            # stage back for minutes; a stage process imports only what its task needs.
            extra=("--heartbeat", str(AGENT_HEARTBEAT_S), "--stage-threads", "1", "--no-zygote"),
        )
        process.env = {**(process.env or os.environ), WITNESS_ENV: str(self.witness_dir)}
        return process

    @property
    def witness_dir(self) -> Path:
        return self.root / "witness"

    def names(self, prefix: str = "") -> list[str]:
        return [name for name in self.slots if name.startswith(prefix)]

    def gateway_urls(self) -> list[str]:
        """The address of each gateway that should be serving."""
        return [
            f"http://127.0.0.1:{slot.current.port}"
            for name, slot in self.slots.items()
            if name.startswith("gateway") and slot.wanted and slot.processes
        ]

    def start(self) -> None:
        for slot in self.slots.values():
            slot.start()

    async def wait_ready(self, timeout: float = services.READY_TIMEOUT_S) -> None:
        """Every wanted service's own readiness (its consumers own partitions and fetch)."""
        import asyncio

        slots = [s for s in self.slots.values() if s.wanted]
        await asyncio.gather(*(s.current.wait_ready(timeout) for s in slots))
        for slot in slots:
            slot.ready_seen = True

    def kill(self, name: str) -> None:
        self.slots[name].kill()

    def restart(self, name: str) -> ServiceProcess:
        return self.slots[name].start()

    def retire(self, name: str) -> None:
        """Kill ``name`` for good: the other instances carry on without it."""
        slot = self.slots[name]
        slot.kill()
        slot.wanted = False

    def supervise(self) -> list[str]:
        """What a deployment's restart policy (on-failure) does, for the wanted services: one
        whose process exited before it was ever ready (started while the broker or the
        database was away, say) is started again and counted; one that exited after it was
        ready died by itself, and is returned with the end of its log. Blocking (it asks each
        service not yet seen ready for its /healthz): call it from a thread."""
        died: list[str] = []
        for name, slot in self.slots.items():
            if not slot.wanted or slot.down or not slot.processes:
                continue
            process = slot.current
            if process.running:
                if not slot.ready_seen and process.port is not None:
                    answer = process.health()
                    slot.ready_seen = answer is not None and answer[0] == 200
                continue
            if slot.ready_seen:
                code = process.process.poll() if process.process is not None else None
                died.append(f"{name} exited (code {code}):\n{process.tail()}")
            else:
                slot.start_failures += 1
                slot.start()
        return died

    def start_failures(self) -> dict[str, int]:
        return {
            name: slot.start_failures for name, slot in self.slots.items() if slot.start_failures
        }

    def kill_counts(self) -> dict[str, int]:
        return {name: slot.kills for name, slot in self.slots.items() if slot.kills}

    def stop(self) -> None:
        """Stop every service, then every stage process the witness names that still runs."""
        services.stop_all([s.current for s in self.slots.values() if s.processes])
        from posttrain.trainer_agent.witness import read_witness

        for line in read_witness(self.witness_dir):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(str(line["pid"])), signal.SIGKILL)


# --- the gateway, as a caller sees it --------------------------------------------------------


# --- a private broker and database server, through the stack's own commands -------------------


@dataclass
class PrivateStack:
    """A Kafka broker and a PostgreSQL server of one test's own: ``posttrain.stack.commands``
    run with POSTTRAIN_STACK_DIR, KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL naming a temporary
    directory and free ports, in a child process each (the stack's commands read the
    environment)."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="posttrain-chaos-")))
    kafka_port: int = 0
    pg_port: int = 0
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # PostgreSQL runs as its own OS user when we are root: it must reach its data dir.
        self.root.chmod(0o755)
        if not self.kafka_port:
            self.kafka_port = _free_pair()
        if not self.pg_port:
            self.pg_port = free_port()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def database_url(self) -> str:
        return f"postgresql://posttrain:posttrain@127.0.0.1:{self.pg_port}/posttrain"

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "POSTTRAIN_STACK_DIR": str(self.root),
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "DATABASE_URL": self.database_url,
        }

    def _commands(self, action: str, *components: str, timeout: float = 240) -> None:
        code = (
            "import sys\nfrom posttrain.stack import commands\n"
            f"sys.exit(commands.{action}({list(components) or None!r}))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.log.append(result.stdout + result.stderr)
        if result.returncode != 0:
            raise RuntimeError(
                f"stack {action} {' '.join(components)} failed:\n{result.stdout}{result.stderr}"
            )

    def up(self, *components: str) -> None:
        self._commands("up", *components)

    def down(self, *components: str) -> None:
        self._commands("down", *components)

    def restart(self, component: str) -> None:
        self.down(component)
        self.up(component)

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.down()
        shutil.rmtree(self.root, ignore_errors=True)


def _free_pair() -> int:
    """A port whose successor is free too (the stack's controller listens right above)."""
    for _ in range(50):
        port = free_port()
        with contextlib.suppress(OSError):
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
    raise RuntimeError("no two adjacent free ports")


@contextlib.contextmanager
def private_stack(*components: str) -> Iterator[PrivateStack]:
    """A private stack (all of it, or the named components), up for the block, destroyed
    (stopped, data removed) after it."""
    stack = PrivateStack()
    try:
        stack.up(*components)
        yield stack
    finally:
        stack.destroy()


def duplicates(values: list[Any]) -> list[Any]:
    """The values that occur more than once."""
    return [v for v, n in Counter(values).items() if n > 1]


# --- where alerts go ---------------------------------------------------------------------------


@dataclass
class AlertReceiver:
    """A loopback generic webhook (``kind: webhook`` channel): counts deliveries per anomaly
    id. A 200 to every request, as a working webhook answers."""

    deliveries: Counter[str] = field(default_factory=Counter)
    url: str = ""
    _runner: Any = None

    async def start(self) -> AlertReceiver:
        from aiohttp import web

        async def receive(request: web.Request) -> web.Response:
            body = await request.json()
            self.deliveries[str(body.get("anomaly_id"))] += 1
            return web.json_response({"received": True})

        app = web.Application()
        app.router.add_post("/alerts", receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/alerts"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
