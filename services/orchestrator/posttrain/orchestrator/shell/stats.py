"""What the orchestrator counts, its health, and its Prometheus exposition.

The counters are bumped on paths the service runs anyway (after a transaction commits, around a
replay), a few integer additions each; anything that needs a walk over the pipelines (how many
in each status) is computed when someone asks, never in the loop. Times are monotonic seconds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from posttrain.orchestrator.core.decide import Decision
from posttrain.orchestrator.core.state import PipelineState, PipelineStatus
from posttrain.service.prometheus import Exposition

# The loop polls at least every half tick (half a second by default) between batches; a batch
# takes seconds at worst. Thirty seconds without a poll, and not replaying, is stuck.
STUCK_AFTER_S = 30.0


@dataclass(slots=True)
class OrchestratorStats:
    """Written by the orchestrator's own loop (and its rebalance listener) only."""

    records: int = 0  # commands and reports consumed
    events_appended: int = 0
    commands_sent: Counter[str] = field(default_factory=Counter)  # agent commands, by type
    dead_letters: int = 0
    transactions_committed: int = 0
    transactions_aborted: int = 0
    replays: int = 0
    events_replayed: int = 0
    replay_seconds: float = 0.0
    last_replay_seconds: float = 0.0
    replaying: bool = False
    snapshots_written: int = 0
    snapshots_loaded: int = 0  # replays that started from a partition's snapshot
    snapshots_unusable: int = 0  # ... that found one unusable and folded the whole log
    pipelines_archived: int = 0  # ended pipelines that left memory with a snapshot
    pipelines_restored: int = 0  # archived pipelines brought back by a message about them
    running: bool = False  # the consumer loop is in ``run``
    last_poll_at: float = 0.0
    # The group has given this instance its partitions (perhaps none) at least once, and their
    # replay is done: until then nothing it is sent is decided.
    assigned: bool = False

    def committed(self, decisions: Iterable[Decision], records: int = 0, dead: int = 0) -> None:
        """A transaction committed with these decisions (and consumed offsets, if any): only
        now did its events and commands happen."""
        events = 0
        commands: Counter[str] = Counter()
        for decision in decisions:
            events += len(decision.events)
            commands.update(envelope.type for _, envelope in decision.commands)
        self.sent(events, commands, records, dead)

    def sent(
        self, events: int, commands: Mapping[str, int], records: int = 0, dead: int = 0
    ) -> None:
        """``committed``, told what the decisions sent: ``events`` events and ``commands``
        agent commands by type."""
        self.transactions_committed += 1
        self.records += records
        self.dead_letters += dead
        self.events_appended += events
        self.commands_sent.update(commands)

    def replayed(self, events: int, seconds: float) -> None:
        self.replays += 1
        self.events_replayed += events
        self.replay_seconds += seconds
        self.last_replay_seconds = seconds


def pipelines_by_status(states: Iterable[Mapping[str, PipelineState]]) -> Counter[str]:
    """Pipelines in memory (those of the owned partitions), by status."""
    return Counter(str(state.status) for by_pipeline in states for state in by_pipeline.values())


def health(
    stats: OrchestratorStats, partitions: Sequence[int], pipelines: int, now: float
) -> tuple[bool, dict[str, Any]]:
    """(ready, document). Live while the consumer loop runs and has polled lately: a replay
    holds the loop by design (the partition's state must be whole before its input is decided),
    so a replay in progress is not a stall, and restarting then would only start it over.
    Ready once live, given its partitions by the group, replayed, and polling: what it is sent
    now is decided now. A starting instance answers 503 with status "starting"."""
    since_poll = now - stats.last_poll_at
    live = stats.running and (stats.replaying or since_poll < STUCK_AFTER_S)
    ready = live and stats.assigned and not stats.replaying
    return ready, {
        "status": "ok" if ready else ("starting" if live else "failing"),
        "alive": stats.running,
        "ready": ready,
        "partitions": list(partitions),
        "replaying": stats.replaying,
        "seconds_since_poll": round(since_poll, 3),
        "pipelines": pipelines,
    }


def render_prometheus(
    stats: OrchestratorStats,
    partitions: Sequence[int],
    by_status: Mapping[str, int],
    now: float,
    prefix: str = "posttrain_orchestrator",
) -> str:
    ok, _ = health(stats, partitions, sum(by_status.values()), now)
    text = Exposition(prefix)
    text.add("up", "gauge", "1 while the consumer loop runs, owns its partitions and polls.", ok)
    text.add("owned_partitions", "gauge", "Partitions this instance owns.", len(partitions))
    text.add(
        "pipelines",
        "gauge",
        "Pipelines in memory (of the owned partitions), by status.",
        [({"status": str(s)}, by_status.get(str(s), 0)) for s in PipelineStatus],
    )
    text.add("records_total", "counter", "Commands and reports consumed.", stats.records)
    text.add(
        "events_appended_total",
        "counter",
        "Events committed to the pipeline event log.",
        stats.events_appended,
    )
    text.add(
        "agent_commands_total",
        "counter",
        "Commands committed to agents, by type.",
        [({"type": t}, n) for t, n in sorted(stats.commands_sent.items())],
    )
    text.add(
        "dead_letters_total",
        "counter",
        "Input messages parked on the dead-letter topic.",
        stats.dead_letters,
    )
    text.add(
        "transactions_total",
        "counter",
        "Kafka transactions, by outcome (an aborted one rebuilds its partition from the log).",
        [
            ({"outcome": "committed"}, stats.transactions_committed),
            ({"outcome": "aborted"}, stats.transactions_aborted),
        ],
    )
    text.add("replays_total", "counter", "Replays of owned partitions.", stats.replays)
    text.add("events_replayed_total", "counter", "Events folded by replays.", stats.events_replayed)
    text.add("replay_seconds_total", "counter", "Time spent replaying.", stats.replay_seconds)
    text.add(
        "last_replay_seconds", "gauge", "How long the last replay took.", stats.last_replay_seconds
    )
    text.add("replaying", "gauge", "1 while a replay runs.", stats.replaying)
    text.add(
        "snapshots_total",
        "counter",
        "Partition snapshots: written, loaded by a replay, or found unusable (the log folded).",
        [
            ({"outcome": "written"}, stats.snapshots_written),
            ({"outcome": "loaded"}, stats.snapshots_loaded),
            ({"outcome": "unusable"}, stats.snapshots_unusable),
        ],
    )
    text.add(
        "pipelines_archived_total",
        "counter",
        "Ended pipelines that left memory with a snapshot.",
        stats.pipelines_archived,
    )
    text.add(
        "pipelines_restored_total",
        "counter",
        "Archived pipelines brought back into memory by a message about them.",
        stats.pipelines_restored,
    )
    text.add(
        "seconds_since_poll",
        "gauge",
        "Seconds since the consumer loop last polled.",
        round(now - stats.last_poll_at, 3),
    )
    return text.render()
