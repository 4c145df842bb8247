"""The global table of agents, read in full from the compacted ``posttrain.agents`` topic."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from posttrain.events.kafka import EventConsumer, KafkaSettings
from posttrain.events.messages import AgentHeartbeat
from posttrain.events.topics import Topic
from posttrain.orchestrator.core.decide import AgentView

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Seen:
    beat: AgentHeartbeat
    at: float  # our clock when it arrived: immune to the agent's clock being off


class AgentTable:
    """Every agent's latest heartbeat. An agent is silent once ``silence_intervals`` of its own
    heartbeat intervals pass without one; a heartbeat with ``stopping`` retires it at once."""

    def __init__(self, settings: KafkaSettings, *, silence_intervals: float = 3.0) -> None:
        self._consumer = EventConsumer(
            settings,
            [Topic.AGENTS],
            group_id=None,
            name="orchestrator-agents",
            isolation_level="read_committed",
        )
        self._seen: dict[str, _Seen] = {}
        self._silence = silence_intervals
        self._task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="agent-table")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    async def _run(self) -> None:
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=500)
            except Exception:  # a poison message is already parked; log anything else and go on
                log.exception("reading agent heartbeats failed")
                await asyncio.sleep(1)
                continue
            now = time.time()
            for received in batch:
                beat = received.envelope.data
                if isinstance(beat, AgentHeartbeat):
                    self._seen[beat.agent_id] = _Seen(beat, now)
            if batch:
                self.changed.set()

    def silent(self, now: float) -> list[str]:
        return sorted(
            agent
            for agent, seen in self._seen.items()
            if seen.beat.stopping or now - seen.at > self._silence * seen.beat.interval_s
        )

    def views(self, now: float, reserved: dict[str, int]) -> dict[str, AgentView]:
        """Agents with their free GPUs less what this instance has sent them that their last
        heartbeat does not show yet."""
        silent = set(self.silent(now))
        return {
            agent: AgentView(
                agent_id=agent,
                gpus=seen.beat.gpus,
                free_gpus=seen.beat.free_gpus - reserved.get(agent, 0),
                labels=frozenset(seen.beat.labels),
                alive=agent not in silent,
            )
            for agent, seen in self._seen.items()
        }

    def running(self, agent: str) -> frozenset[str]:
        seen = self._seen.get(agent)
        return frozenset(seen.beat.running) if seen else frozenset()
