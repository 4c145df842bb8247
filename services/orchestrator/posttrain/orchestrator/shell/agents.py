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

# While the broker is up, a fetch of the agents topic is answered at least every
# fetch_max_wait_ms (0.5 s by default) even when no heartbeat arrives. A longer gap between
# answers is time in which this instance could hear no agent at all (the broker restarting,
# the network cut): it does not count as any agent's silence.
BLIND_AFTER_S = 2.0


@dataclass(slots=True)
class _Seen:
    beat: AgentHeartbeat
    at: float  # our clock when it arrived: immune to the agent's clock being off


class AgentTable:
    """Every agent's latest heartbeat. An agent is silent once ``silence_intervals`` of its own
    heartbeat intervals pass without one; a heartbeat with ``stopping`` retires it at once.

    Only time in which the topic could be read counts: an agent whose heartbeats cannot reach
    this instance because the broker is away is not lost (a broker restart used to mark every
    agent lost and retry each running stage elsewhere while the first attempt ran on)."""

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
        # Our clock when the broker last answered a fetch of every partition of the topic.
        self._heard_at: float | None = None

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
            self.heard(self._last_answer())
            now = time.time()
            for received in batch:
                beat = received.envelope.data
                if isinstance(beat, AgentHeartbeat):
                    self.record(beat, now)
            if batch:
                self.changed.set()

    def _last_answer(self) -> float | None:
        """When the broker last answered a fetch of every assigned partition (our clock)."""
        client = self._consumer.client
        stamps = [client.last_poll_timestamp(tp) for tp in client.assignment()]
        if not stamps or any(s is None for s in stamps):
            return None
        return float(min(s for s in stamps if s is not None)) / 1000

    def heard(self, at: float | None) -> None:
        """The broker answered at ``at``: a gap since the previous answer longer than
        ``BLIND_AFTER_S`` is taken off every agent's silence."""
        if at is None:
            return
        if self._heard_at is not None and at - self._heard_at > BLIND_AFTER_S:
            blind = at - self._heard_at
            log.warning("no answer from the broker for %.1f s: not counted as silence", blind)
            for seen in self._seen.values():
                seen.at += blind
        self._heard_at = at if self._heard_at is None else max(self._heard_at, at)

    def record(self, beat: AgentHeartbeat, at: float) -> None:
        """``beat`` arrived at ``at`` (our clock)."""
        self._seen[beat.agent_id] = _Seen(beat, at)

    def silent(self, now: float) -> list[str]:
        """The agents not heard from for too long at ``now``, counting only the time in which
        the broker answered (up to ``BLIND_AFTER_S`` past its last answer)."""
        if self._heard_at is not None:
            now = min(now, self._heard_at + BLIND_AFTER_S)
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
