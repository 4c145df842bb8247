"""The global table of agents, read in full from the compacted ``posttrain.agents`` topic."""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from posttrain.events.kafka import KafkaSettings
from posttrain.events.kafka.producer import partition_for
from posttrain.events.messages import AgentHeartbeat
from posttrain.events.topics import TOPICS, Topic
from posttrain.orchestrator.core.decide import AgentView
from posttrain.orchestrator.shell.following import Followed, TopicFollower

log = logging.getLogger(__name__)

# While the broker is up, a fetch of the agents topic is answered at least every
# fetch_max_wait_ms (0.5 s by default) even when no heartbeat arrives. A longer gap between
# answers is time in which this instance could hear no agent at all (the broker restarting,
# the network cut): it does not count as any agent's silence.
BLIND_AFTER_S = 2.0


class Heartbeat(Protocol):
    """What the table reads of an ``AgentHeartbeat``: the message, or its view as the topic is
    read (``TopicFollower``)."""

    @property
    def agent_id(self) -> str: ...
    @property
    def gpus(self) -> int: ...
    @property
    def free_gpus(self) -> int: ...
    @property
    def labels(self) -> Sequence[str]: ...
    @property
    def running(self) -> Sequence[str]: ...
    @property
    def slots(self) -> int | None: ...
    @property
    def interval_s(self) -> float: ...
    @property
    def sent_at(self) -> float: ...
    @property
    def stopping(self) -> bool: ...


@dataclass(slots=True)
class _Seen:
    beat: Heartbeat
    at: float  # our clock when it arrived: immune to the agent's clock being off


class AgentTable(TopicFollower):
    """Every agent's latest heartbeat, and what this instance has sent each agent that is not
    over yet (its reservations). An agent is silent once ``silence_intervals`` of its own
    heartbeat intervals pass without one; a heartbeat with ``stopping`` retires it at once.
    Only time in which the topic could be read counts: an agent whose heartbeats cannot reach
    this instance because the broker is away is not lost (a broker restart used to mark every
    agent lost and retry each running stage elsewhere while the first attempt ran on).

    ``views`` is asked for on every message, so the views are kept, not rebuilt: an agent's
    view is made again when its heartbeat or its reservations change, and every view when
    liveness is looked at again (at most every ``liveness_every_s``)."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        silence_intervals: float = 3.0,
        liveness_every_s: float = 0.1,
    ) -> None:
        super().__init__(settings, Topic.AGENTS, "orchestrator-agents")
        self._seen: dict[str, _Seen] = {}
        self._silence = silence_intervals
        self.changed = asyncio.Event()
        # agent -> {command id: GPUs} of the stages this instance sent it and saw no end of
        self._reserved: dict[str, dict[str, int]] = {}
        self._agent_of: dict[str, str] = {}  # command id -> agent, for the same stages
        # agent -> stages its last heartbeat lists as running that we know have ended since
        # (their outcome reached us): their slots are free already
        self._ended: dict[str, set[str]] = {}
        self._views: dict[str, AgentView] = {}
        self._dirty: set[str] = set()
        self._silent: frozenset[str] = frozenset()
        self._liveness_at = float("-inf")
        self._liveness_every = liveness_every_s
        # Our clock when the broker last answered a fetch of every partition of the topic.
        self._heard_at: float | None = None
        # The agents whose home partition this instance owns are its share to fill first.
        self._owned: frozenset[int] = frozenset()
        self._partitions = TOPICS[Topic.PIPELINE_EVENTS].partitions
        self._home: dict[str, int] = {}

    def take(self, batch: list[Followed]) -> None:
        self.answered(self._last_answer())
        now = time.time()
        for envelope in batch:
            if envelope.type == AgentHeartbeat.TYPE:
                self.heard(envelope.data, now)
        if batch:
            self.changed.set()

    def heard(self, beat: Heartbeat, now: float) -> None:
        """Take an agent's heartbeat, received at ``now`` on our clock."""
        self._seen[beat.agent_id] = _Seen(beat, now)
        ended = self._ended.get(beat.agent_id)
        if ended:
            ended.intersection_update(beat.running)
        self._dirty.add(beat.agent_id)

    def own(self, partitions: frozenset[int]) -> None:
        """The pipeline partitions this instance owns now: its share of the agents follows."""
        if partitions != self._owned:
            self._owned = partitions
            self._dirty.update(self._seen)

    def _is_home(self, agent: str) -> bool:
        p = self._home.get(agent)
        if p is None:
            p = self._home[agent] = partition_for(agent.encode(), self._partitions)
        return p in self._owned

    # --- reservations -------------------------------------------------------------------------

    def reserve(self, agent: str, command_id: str, gpus: int) -> None:
        """A stage was sent to ``agent``: count its GPUs and its slot until it ends."""
        if self._agent_of.get(command_id) == agent:
            return
        self.release(command_id)
        self._reserved.setdefault(agent, {})[command_id] = gpus
        self._agent_of[command_id] = agent
        self._dirty.add(agent)

    def release(self, command_id: str, *, ended: bool = False) -> None:
        """The stage is no longer ours to count. ``ended``: its agent reported its outcome, so
        its slot is free even while the agent's last heartbeat still lists it."""
        agent = self._agent_of.pop(command_id, None)
        if agent is None:
            return
        seen = self._seen.get(agent)
        if ended and seen is not None and command_id in seen.beat.running:
            self._ended.setdefault(agent, set()).add(command_id)
        held = self._reserved.get(agent)
        if held is not None:
            held.pop(command_id, None)
            if not held:
                del self._reserved[agent]
        self._dirty.add(agent)

    # --- reading ------------------------------------------------------------------------------

    def _last_answer(self) -> float | None:
        """When the broker last answered a fetch of every assigned partition (our clock)."""
        client = self._consumer.client
        stamps = [client.last_poll_timestamp(tp) for tp in client.assignment()]
        if not stamps or any(s is None for s in stamps):
            return None
        return float(min(s for s in stamps if s is not None)) / 1000

    def answered(self, at: float | None) -> None:
        """The broker answered at ``at``: a gap since the previous answer longer than
        ``BLIND_AFTER_S`` is taken off every agent's silence."""
        if at is None:
            return
        if self._heard_at is not None and at - self._heard_at > BLIND_AFTER_S:
            blind = at - self._heard_at
            log.warning("no answer from the broker for %.1f s: not counted as silence", blind)
            for seen in self._seen.values():
                seen.at += blind
            self._dirty.update(self._seen)
        self._heard_at = at if self._heard_at is None else max(self._heard_at, at)

    def _lost(self, seen: _Seen, now: float) -> bool:
        """Stopping, or not heard from for too long at ``now``, counting only the time in which
        the broker answered (up to ``BLIND_AFTER_S`` past its last answer)."""
        if self._heard_at is not None:
            now = min(now, self._heard_at + BLIND_AFTER_S)
        return seen.beat.stopping or now - seen.at > self._silence * seen.beat.interval_s

    def silent(self, now: float) -> list[str]:
        """The agents that are stopping or not heard from for too long at ``now``."""
        return sorted(agent for agent, seen in self._seen.items() if self._lost(seen, now))

    def views(self, now: float) -> dict[str, AgentView]:
        """Every agent with its free GPUs and slots less what this instance has sent it that
        its last heartbeat does not show yet. The mapping is kept and updated in place by the
        next call: read it before then."""
        if now - self._liveness_at >= self._liveness_every:
            self._liveness_at = now
            silent = frozenset(self.silent(now))
            if silent != self._silent:
                self._dirty |= silent ^ self._silent
                self._silent = silent
        for agent in self._dirty:
            seen = self._seen.get(agent)
            if seen is None:
                self._views.pop(agent, None)
            else:
                self._views[agent] = self._view(seen, now)
        self._dirty.clear()
        return self._views

    def _view(self, seen: _Seen, now: float) -> AgentView:
        beat = seen.beat
        running = set(beat.running)
        held = self._reserved.get(beat.agent_id, {})
        unseen = [gpus for command, gpus in held.items() if command not in running]
        running -= self._ended.get(beat.agent_id, set())
        # A stage the heartbeat shows and one sent since both hold a slot, less those whose
        # outcome reached us since. Another instance's stage that ended since the heartbeat
        # still counts until the next one (a little late, never over).
        return AgentView(
            agent_id=beat.agent_id,
            gpus=beat.gpus,
            free_gpus=beat.free_gpus - sum(unseen),
            labels=frozenset(beat.labels),
            alive=not self._lost(seen, now),
            free_slots=None if beat.slots is None else beat.slots - len(running) - len(unseen),
            beat_at=beat.sent_at,
            ring=zlib.crc32(beat.agent_id.encode()),
            home=self._is_home(beat.agent_id),
        )

    def running(self, agent: str) -> frozenset[str]:
        seen = self._seen.get(agent)
        return frozenset(seen.beat.running) if seen else frozenset()
