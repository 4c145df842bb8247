"""When a batch is written, what committing it means, and when to stop reading.

A batch closes when it holds ``max_rows`` rows or its first message is ``max_age_s`` old. Each
batch carries, per Kafka partition, the offset to commit once its rows are durable: the offset
after the last message it holds (a message that went to the dead-letter topic counts as handled,
with no rows). Consumption pauses while more than ``max_pending_rows`` rows are held in memory
(open batch plus batches being written): that bound is what keeps memory flat while PostgreSQL
is slow or down.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

Partition = TypeVar("Partition", bound=Hashable)
Item = TypeVar("Item")


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How big and how old a batch may grow, and how much may wait in memory."""

    max_rows: int = 20_000
    max_age_s: float = 0.1
    max_pending_rows: int = 60_000

    def __post_init__(self) -> None:
        if self.max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {self.max_rows}")
        if self.max_age_s < 0:
            raise ValueError(f"max_age_s must be >= 0, got {self.max_age_s}")
        if self.max_pending_rows < self.max_rows:
            raise ValueError(
                f"max_pending_rows ({self.max_pending_rows}) must be at least max_rows "
                f"({self.max_rows})"
            )

    def should_pause(self, pending_rows: int) -> bool:
        return pending_rows >= self.max_pending_rows

    def may_resume(self, pending_rows: int) -> bool:
        # Hysteresis: resume well below the bound, so that a paused consumer does not flap
        # between pause and resume on every batch.
        return pending_rows <= self.max_pending_rows // 2


# The default: batches big enough for COPY to run at full speed, young enough that a point is
# queryable well within a second or two of being emitted.
DEFAULT_POLICY = BatchPolicy()

PRESETS: dict[str, BatchPolicy] = {
    "default": DEFAULT_POLICY,
    # SEED.md section 2's MetricsBuffer: 100 records or 30 seconds.
    "seed": BatchPolicy(max_rows=100, max_age_s=30.0, max_pending_rows=10_000),
    # Small, frequent batches: lowest latency, lower throughput.
    "low-latency": BatchPolicy(max_rows=2_000, max_age_s=0.05, max_pending_rows=20_000),
}


def preset(name: str) -> BatchPolicy:
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise ValueError(f"unknown batch preset {name!r}; known: {known}") from None


class Entry(NamedTuple, Generic[Partition, Item]):
    partition: Partition
    item: Item
    rows: int


@dataclass(slots=True)
class Batch(Generic[Partition, Item]):
    """Items to write together, and the offsets their write makes committable."""

    entries: list[Entry[Partition, Item]] = field(default_factory=list)
    offsets: dict[Partition, int] = field(default_factory=dict)
    rows: int = 0
    opened_at: float | None = None

    @property
    def items(self) -> list[Item]:
        return [entry.item for entry in self.entries]

    def __len__(self) -> int:
        return len(self.entries)


class Batcher(Generic[Partition, Item]):
    """The open batch. Times are the caller's monotonic clock, in seconds."""

    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        self._batch: Batch[Partition, Item] = Batch()

    @property
    def rows(self) -> int:
        return self._batch.rows

    @property
    def empty(self) -> bool:
        """Nothing to write and nothing to commit."""
        return not self._batch.offsets

    def add(
        self, partition: Partition, next_offset: int, item: Item | None, rows: int, now: float
    ) -> None:
        """Record a consumed message: its rows (``item`` None for a message handled without
        rows, e.g. dead-lettered) and the offset that follows it."""
        batch = self._batch
        if batch.opened_at is None:
            batch.opened_at = now
        if item is not None:
            batch.entries.append(Entry(partition, item, rows))
            batch.rows += rows
        batch.offsets[partition] = next_offset

    def due(self, now: float) -> bool:
        batch = self._batch
        if batch.opened_at is None:
            return False
        return batch.rows >= self.policy.max_rows or now - batch.opened_at >= self.policy.max_age_s

    def seconds_until_due(self, now: float) -> float | None:
        """How long until the open batch is due by age; None when it is empty."""
        opened = self._batch.opened_at
        if opened is None:
            return None
        return max(0.0, opened + self.policy.max_age_s - now)

    def take(self) -> Batch[Partition, Item]:
        """Close the open batch and start a new one."""
        batch, self._batch = self._batch, Batch()
        return batch

    def drop_partitions(self, partitions: Iterable[Partition]) -> int:
        """Forget what the open batch holds of ``partitions`` (revoked in a rebalance: their new
        owner reads them again from the committed offset). Returns the rows dropped."""
        gone = set(partitions)
        batch = self._batch
        if not gone.intersection(batch.offsets):
            return 0
        kept = [entry for entry in batch.entries if entry.partition not in gone]
        dropped = batch.rows - sum(entry.rows for entry in kept)
        for partition in gone:
            batch.offsets.pop(partition, None)
        batch.entries = kept
        batch.rows -= dropped
        if not batch.offsets:
            batch.opened_at = None
        return dropped
