"""Group identified points into ``MetricsReported`` batches.

A message says ``first_seq`` and point i is ``first_seq + i``, so a batch must be a run of
consecutive sequence numbers of one source. Points spilled out of order (a full queue sends some
to disk while later ones go straight out) simply make more, shorter runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple, Protocol

from posttrain.events.messages import MetricPoint


class Routing(NamedTuple):
    """Which job a point belongs to and, for routing actions, which pipeline stage attempt."""

    job_id: str
    pipeline_id: str | None = None
    stage: str | None = None
    attempt: int | None = None


class Identified(Protocol):
    @property
    def job_id(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def point(self) -> MetricPoint: ...
    @property
    def pipeline_id(self) -> str | None: ...
    @property
    def stage(self) -> str | None: ...
    @property
    def attempt(self) -> int | None: ...


def contiguous_batches(
    points: Iterable[Identified], max_points: int
) -> Iterator[tuple[Routing, str, int, list[MetricPoint]]]:
    """(routing, source, first_seq, points) for each run of consecutive seqs, at most
    ``max_points`` long. A seq seen twice in the input is sent once."""
    if max_points < 1:
        raise ValueError("max_points must be at least 1")
    groups: dict[tuple[Routing, str], dict[int, MetricPoint]] = {}
    for p in points:
        key = (Routing(p.job_id, p.pipeline_id, p.stage, p.attempt), p.source)
        groups.setdefault(key, {})[p.seq] = p.point
    for (routing, source), by_seq in groups.items():
        run: list[MetricPoint] = []
        first = previous = -2
        for seq in sorted(by_seq):
            if run and (seq != previous + 1 or len(run) >= max_points):
                yield routing, source, first, run
                run = []
            if not run:
                first = seq
            run.append(by_seq[seq])
            previous = seq
        if run:
            yield routing, source, first, run
