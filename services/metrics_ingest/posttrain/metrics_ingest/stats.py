"""What the service counts, and its Prometheus text exposition (format 0.0.4)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

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
    batch_histogram: list[int] = field(default_factory=lambda: [0] * (len(BATCH_BUCKETS) + 1))
    batch_rows_sum: int = 0
    _recent: deque[tuple[float, int]] = field(default_factory=deque)

    def batch_written(self, offered: int, inserted: int, via_staging: bool, now: float) -> None:
        self.batches += 1
        self.batches_via_staging += via_staging
        self.rows_inserted += inserted
        self.rows_duplicate += offered - inserted
        self.last_batch_rows = offered
        self.batch_rows_sum += offered
        for i, bound in enumerate(BATCH_BUCKETS):
            if offered <= bound:
                self.batch_histogram[i] += 1
                break
        else:
            self.batch_histogram[-1] += 1
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


def _line(name: str, value: float, labels: Mapping[str, str] | None = None) -> str:
    if labels:
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        name = f"{name}{{{inner}}}"
    return f"{name} {_number(value)}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def render_prometheus(
    stats: IngestStats,
    lag: Mapping[tuple[str, int], int],
    now: float,
    prefix: str = "posttrain_ingest",
) -> str:
    """The exposition text: lag per partition, batch sizes, rows/s, dead letters, state."""
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: Iterable[str]) -> None:
        out.append(f"# HELP {prefix}_{name} {help_}")
        out.append(f"# TYPE {prefix}_{name} {kind}")
        out.extend(samples)

    p = prefix
    metric(
        "consumer_lag_messages",
        "gauge",
        "Messages on posttrain.metrics not yet durable in PostgreSQL, per partition.",
        [
            _line(f"{p}_consumer_lag_messages", n, {"topic": t, "partition": str(part)})
            for (t, part), n in sorted(lag.items())
        ],
    )
    metric(
        "consumer_lag_messages_total",
        "gauge",
        "Messages not yet durable, all assigned partitions.",
        [_line(f"{p}_consumer_lag_messages_total", sum(lag.values()))],
    )
    cumulative = 0
    buckets = []
    for bound, count in zip(BATCH_BUCKETS, stats.batch_histogram, strict=False):
        cumulative += count
        buckets.append(_line(f"{p}_batch_rows_bucket", cumulative, {"le": _number(bound)}))
    buckets.append(_line(f"{p}_batch_rows_bucket", stats.batches, {"le": "+Inf"}))
    buckets.append(_line(f"{p}_batch_rows_sum", stats.batch_rows_sum))
    buckets.append(_line(f"{p}_batch_rows_count", stats.batches))
    metric("batch_rows", "histogram", "Rows per batch written.", buckets)
    metric(
        "last_batch_rows",
        "gauge",
        "Rows in the last batch written.",
        [_line(f"{p}_last_batch_rows", stats.last_batch_rows)],
    )
    metric(
        "rows_per_second",
        "gauge",
        f"Rows inserted per second over {RATE_WINDOW_S:.0f} s.",
        [_line(f"{p}_rows_per_second", round(stats.rows_per_second(now), 1))],
    )
    metric(
        "rows_inserted_total",
        "counter",
        "Rows inserted into metrics.",
        [_line(f"{p}_rows_inserted_total", stats.rows_inserted)],
    )
    metric(
        "rows_duplicate_total",
        "counter",
        "Redelivered rows skipped as already stored.",
        [_line(f"{p}_rows_duplicate_total", stats.rows_duplicate)],
    )
    metric(
        "batches_total",
        "counter",
        "Batches written.",
        [_line(f"{p}_batches_total", stats.batches)],
    )
    metric(
        "messages_total",
        "counter",
        "Messages consumed.",
        [_line(f"{p}_messages_total", stats.messages)],
    )
    metric(
        "dead_letters_total",
        "counter",
        "Messages parked on the dead-letter topic.",
        [_line(f"{p}_dead_letters_total", stats.dead_letters)],
    )
    metric(
        "write_failures_total",
        "counter",
        "Failed attempts to write a batch (retried).",
        [_line(f"{p}_write_failures_total", stats.write_failures)],
    )
    metric(
        "commit_failures_total",
        "counter",
        "Offset commits refused (the rows stay; redelivery is deduplicated).",
        [_line(f"{p}_commit_failures_total", stats.commit_failures)],
    )
    metric(
        "pending_rows",
        "gauge",
        "Rows held in memory (open batch and batches being written).",
        [_line(f"{p}_pending_rows", stats.pending_rows)],
    )
    metric(
        "paused",
        "gauge",
        "1 while consumption is paused (backpressure).",
        [_line(f"{p}_paused", int(stats.paused))],
    )
    metric(
        "database_up",
        "gauge",
        "1 if the last attempt to write succeeded.",
        [_line(f"{p}_database_up", int(stats.db_up))],
    )
    return "\n".join(out) + "\n"
