"""The agent's HTTP side: ``GET /healthz`` and ``GET /metrics`` (Prometheus text format).

A few lines of asyncio rather than a web framework: two fixed routes and nothing more to
install on a GPU node.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


@dataclass
class AgentStats:
    """What the agent counts; written by the agent's loop only."""

    agent_id: str
    heartbeat_interval_s: float
    started_at: float = field(default_factory=time.time)
    last_heartbeat_at: float = 0.0
    commands: Counter[str] = field(default_factory=Counter)  # by message type
    launches: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # "succeeded", or the failure kind
    rejected: int = 0
    replayed: int = 0
    send_errors: int = 0
    running: int = 0
    paused: int = 0

    def healthy(self, now: float) -> bool:
        """Alive while heartbeats go out: three missed intervals is unhealthy."""
        return now - self.last_heartbeat_at < 3 * self.heartbeat_interval_s + 1

    def prometheus(self, now: float) -> str:
        agent = self.agent_id.replace("\\", "\\\\").replace('"', '\\"')
        label = f'agent="{agent}"'
        lines = [
            "# HELP posttrain_agent_up 1 while heartbeats go out.",
            "# TYPE posttrain_agent_up gauge",
            f"posttrain_agent_up{{{label}}} {int(self.healthy(now))}",
            "# HELP posttrain_agent_stages Stages by state.",
            "# TYPE posttrain_agent_stages gauge",
            f'posttrain_agent_stages{{{label},state="running"}} {self.running}',
            f'posttrain_agent_stages{{{label},state="paused"}} {self.paused}',
            "# HELP posttrain_agent_commands_total Commands handled, by type.",
            "# TYPE posttrain_agent_commands_total counter",
            *(
                f'posttrain_agent_commands_total{{{label},type="{t}"}} {n}'
                for t, n in sorted(self.commands.items())
            ),
            "# HELP posttrain_agent_launches_total Stage processes started.",
            "# TYPE posttrain_agent_launches_total counter",
            f"posttrain_agent_launches_total{{{label}}} {self.launches}",
            "# HELP posttrain_agent_outcomes_total Stages finished, by outcome.",
            "# TYPE posttrain_agent_outcomes_total counter",
            *(
                f'posttrain_agent_outcomes_total{{{label},outcome="{o}"}} {n}'
                for o, n in sorted(self.outcomes.items())
            ),
            "# HELP posttrain_agent_rejected_total RunStage commands rejected for capacity.",
            "# TYPE posttrain_agent_rejected_total counter",
            f"posttrain_agent_rejected_total{{{label}}} {self.rejected}",
            "# HELP posttrain_agent_replayed_total RunStage answered from the journal.",
            "# TYPE posttrain_agent_replayed_total counter",
            f"posttrain_agent_replayed_total{{{label}}} {self.replayed}",
            "# HELP posttrain_agent_send_errors_total Reports or heartbeats Kafka did not take.",
            "# TYPE posttrain_agent_send_errors_total counter",
            f"posttrain_agent_send_errors_total{{{label}}} {self.send_errors}",
        ]
        return "\n".join(lines) + "\n"


class HttpEndpoints:
    def __init__(self, stats: AgentStats, host: str = "127.0.0.1", port: int = 9466) -> None:
        self.stats = stats
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Start listening; returns the port (useful with port 0)."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method != "GET":
            return 405, "text/plain", b"GET only\n"
        now = time.time()
        if path == "/healthz":
            healthy = self.stats.healthy(now)
            body = orjson.dumps(
                {
                    "status": "ok" if healthy else "unhealthy",
                    "agent": self.stats.agent_id,
                    "running": self.stats.running,
                    "paused": self.stats.paused,
                    "last_heartbeat_s_ago": round(now - self.stats.last_heartbeat_at, 3),
                }
            )
            return (200 if healthy else 503), "application/json", body
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4", self.stats.prometheus(now).encode()
        return 404, "text/plain", b"not found\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            status, content_type, body = self.route(method, path.split("?", 1)[0])
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
