"""The agent's HTTP side: ``GET /healthz`` and ``GET /metrics`` (Prometheus text format),
served by ``posttrain.service.http`` (nothing more to install on a GPU node)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import orjson

from posttrain.service.http import Handler, Response, only
from posttrain.service.prometheus import CONTENT_TYPE, Exposition


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
    refused: int = 0  # control commands the agent could not apply (reported as ActionRefused)
    replayed: int = 0
    send_errors: int = 0
    running: int = 0
    paused: int = 0

    def healthy(self, now: float) -> bool:
        """Alive while heartbeats go out: three missed intervals is unhealthy."""
        return now - self.last_heartbeat_at < 3 * self.heartbeat_interval_s + 1

    def prometheus(self, now: float) -> str:
        text = Exposition("posttrain_agent", labels={"agent": self.agent_id})
        text.add("up", "gauge", "1 while heartbeats go out.", int(self.healthy(now)))
        text.add(
            "stages",
            "gauge",
            "Stages by state.",
            [({"state": "running"}, self.running), ({"state": "paused"}, self.paused)],
        )
        text.add(
            "commands_total",
            "counter",
            "Commands handled, by type.",
            [({"type": t}, n) for t, n in sorted(self.commands.items())],
        )
        text.add("launches_total", "counter", "Stage processes started.", self.launches)
        text.add(
            "outcomes_total",
            "counter",
            "Stages finished, by outcome.",
            [({"outcome": o}, n) for o, n in sorted(self.outcomes.items())],
        )
        text.add(
            "rejected_total",
            "counter",
            "RunStage commands rejected for capacity.",
            self.rejected,
        )
        text.add(
            "controls_refused_total",
            "counter",
            "Control commands the agent could not apply (reported as ActionRefused).",
            self.refused,
        )
        text.add("replayed_total", "counter", "RunStage answered from the journal.", self.replayed)
        text.add(
            "send_errors_total",
            "counter",
            "Reports or heartbeats Kafka did not take.",
            self.send_errors,
        )
        return text.render()


def routes(stats: AgentStats) -> dict[str, Handler]:
    """The agent's routes, for ``posttrain.service.http.EndpointServer``."""

    async def healthz(method: str) -> Response:
        now = time.time()
        healthy = stats.healthy(now)
        body = orjson.dumps(
            {
                "status": "ok" if healthy else "unhealthy",
                "agent": stats.agent_id,
                "running": stats.running,
                "paused": stats.paused,
                "last_heartbeat_s_ago": round(now - stats.last_heartbeat_at, 3),
            }
        )
        return (200 if healthy else 503), "application/json", body

    async def metrics(method: str) -> Response:
        return 200, CONTENT_TYPE, stats.prometheus(time.time()).encode()

    return {"/healthz": only("GET", healthz), "/metrics": only("GET", metrics)}
