"""The spill file says whether points wait on disk without asking the disk each time, and stays
right through appends, takes, acknowledgements, and a namesake's leftovers."""

from __future__ import annotations

import math
from pathlib import Path

from posttrain.events.messages import MetricPoint
from posttrain.trainer_agent.spill import SpilledPoint, SpillFile


def _points(*seqs: int) -> list[SpilledPoint]:
    return [
        SpilledPoint("job", "src", s, MetricPoint(step=s, timestamp=1.0, loss=math.nan))
        for s in seqs
    ]


def test_pending_follows_appends_takes_and_acknowledgements(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path, "job", "src")
    assert not spill.has_pending() and spill.take() == []

    spill.append(_points(0, 1))
    assert spill.has_pending()
    taken = spill.take()
    assert [p.seq for p in taken] == [0, 1] and math.isnan(taken[0].point.loss)
    assert spill.has_pending()  # taken, not yet acknowledged: still on disk
    spill.append(_points(2))  # appended while the first batch is out
    spill.acknowledge()
    assert spill.has_pending()
    assert [p.seq for p in spill.take()] == [2]
    spill.acknowledge()
    assert not spill.has_pending() and spill.take() == []
    spill.close()


def test_a_namesakes_leftovers_are_pending_from_the_start(tmp_path: Path) -> None:
    first = SpillFile(tmp_path, "job", "src")
    first.append(_points(0))
    first.close()  # a reporter that could not deliver: its points stay on disk

    second = SpillFile(tmp_path, "job", "src")
    assert second.has_pending()
    assert [p.seq for p in second.take()] == [0]
    second.acknowledge()
    assert not second.has_pending()
    second.close()
