"""What the service counts, and its Prometheus text exposition (format 0.0.4)."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client import Histogram

from posttrain.service.prometheus import Exposition

# Upper bounds of the batch-size histogram, in rows.
BATCH_BUCKETS: tuple[float, ...] = (1, 10, 100, 1_000, 5_000, 10_000, 20_000, 50_000, 100_000)
RATE_WINDOW_S = 10.0


@dataclass(slots=True)
class IngestStats:
    """Counters and gauges of one ingest process. Times are monotonic seconds."""

    rows_inserted: int = 0
    rows_duplicate: int = 0
    batches: int = 0
    batches_via_staging: int = 0
    messages: int = 0
    dead_letters: int = 0
    write_failures: int = 0
    commit_failures: int = 0
    last_batch_rows: int = 0
    pending_rows: int = 0
    paused: bool = False
    db_up: bool = False
    batch_rows: Histogram = field(
        default_factory=lambda: Histogram(
            "batch_rows", "Rows per batch written.", buckets=BATCH_BUCKETS, registry=None
        )
    )
    _recent: deque[tuple[float, int]] = field(default_factory=deque)

    def batch_written(self, offered: int, inserted: int, via_staging: bool, now: float) -> None:
        self.batches += 1
        self.batches_via_staging += via_staging
        self.rows_inserted += inserted
        self.rows_duplicate += offered - inserted
        self.last_batch_rows = offered
        self.batch_rows.observe(offered)
        self._recent.append((now, inserted))
        self._trim(now)

    def rows_per_second(self, now: float) -> float:
        """Rows inserted per second over the last ``RATE_WINDOW_S`` seconds."""
        self._trim(now)
        return sum(n for _, n in self._recent) / RATE_WINDOW_S

    def _trim(self, now: float) -> None:
        recent = self._recent
        while recent and recent[0][0] < now - RATE_WINDOW_S:
            recent.popleft()


def render_prometheus(
    stats: IngestStats,
    lag: Mapping[tuple[str, int], int],
    now: float,
    prefix: str = "posttrain_ingest",
) -> str:
    """The exposition text: lag per partition, batch sizes, rows/s, dead letters, state."""
    text = Exposition(prefix)
    text.add(
        "consumer_lag_messages",
        "gauge",
        "Messages on posttrain.metrics not yet durable in PostgreSQL, per partition.",
        [({"topic": t, "partition": str(part)}, n) for (t, part), n in sorted(lag.items())],
    )
    text.add(
        "consumer_lag_messages_total",
        "gauge",
        "Messages not yet durable, all assigned partitions.",
        sum(lag.values()),
    )
    text.collect_from(stats.batch_rows)
    text.add("last_batch_rows", "gauge", "Rows in the last batch written.", stats.last_batch_rows)
    text.add(
        "rows_per_second",
        "gauge",
        f"Rows inserted per second over {RATE_WINDOW_S:.0f} s.",
        round(stats.rows_per_second(now), 1),
    )
    text.add("rows_inserted_total", "counter", "Rows inserted into metrics.", stats.rows_inserted)
    text.add(
        "rows_duplicate_total",
        "counter",
        "Redelivered rows skipped as already stored.",
        stats.rows_duplicate,
    )
    text.add("batches_total", "counter", "Batches written.", stats.batches)
    text.add("messages_total", "counter", "Messages consumed.", stats.messages)
    text.add(
        "dead_letters_total",
        "counter",
        "Messages parked on the dead-letter topic.",
        stats.dead_letters,
    )
    text.add(
        "write_failures_total",
        "counter",
        "Failed attempts to write a batch (retried).",
        stats.write_failures,
    )
    text.add(
        "commit_failures_total",
        "counter",
        "Offset commits refused (the rows stay; redelivery is deduplicated).",
        stats.commit_failures,
    )
    text.add(
        "pending_rows",
        "gauge",
        "Rows held in memory (open batch and batches being written).",
        stats.pending_rows,
    )
    text.add("paused", "gauge", "1 while consumption is paused (backpressure).", stats.paused)
    text.add("database_up", "gauge", "1 if the last attempt to write succeeded.", stats.db_up)
    return text.render()
