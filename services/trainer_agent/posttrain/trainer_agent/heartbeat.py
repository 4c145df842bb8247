"""The agent's heartbeat on ``posttrain.agents``: who it is, what it has free, what it runs."""

from __future__ import annotations

from collections.abc import Mapping

from posttrain.events.messages import AgentHeartbeat
from posttrain.trainer_agent.core.decide import Setup
from posttrain.trainer_agent.core.state import Entry, Status, usage


def heartbeat(
    setup: Setup,
    entries: Mapping[str, Entry],
    *,
    host: str,
    interval_s: float,
    now: float,
    stopping: bool = False,
) -> AgentHeartbeat:
    used = usage(entries)
    return AgentHeartbeat(
        agent_id=setup.agent_id,
        host=host,
        gpus=setup.gpus,
        free_gpus=setup.gpus - len(used.gpu_ids),
        labels=sorted(setup.labels),
        running=list(used.running),
        slots=setup.slots,
        interval_s=interval_s,
        sent_at=now,
        stopping=stopping,
    )


def paused_count(entries: Mapping[str, Entry]) -> int:
    return sum(1 for e in entries.values() if e.status is Status.PAUSED)
