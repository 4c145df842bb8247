"""States handed from a replay helper come back equal to the states it folded."""

from __future__ import annotations

from pathlib import Path

from posttrain.events import decode
from posttrain.events.messages import StageSpec
from posttrain.events.views import ViewDecoder
from posttrain.orchestrator.core.packing import pack, unpack
from posttrain.orchestrator.core.state import fold
from posttrain.orchestrator.shell.replay import _shares

GOLDEN = Path(__file__).parent / "golden"


def _lines() -> list[bytes]:
    return [
        line.encode()
        for path in sorted(GOLDEN.glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def test_states_folded_from_views_come_back_equal():
    views = ViewDecoder()
    states = {0: fold(views.decode(line) for line in _lines())}
    back = unpack(pack(states))
    # A stage's definition comes back as the view replay reads; its model is made on demand.
    stage = next(iter(back[0]["golden-seed"].stages.values()))
    assert not isinstance(stage.definition, StageSpec)
    assert isinstance(stage.spec, StageSpec) and stage.spec.name == stage.name
    assert back == states
    assert sum(len(s.stages) for s in back[0].values()) > 5


def test_states_folded_from_models_come_back_equal_to_them():
    states = {3: fold(decode(line) for line in _lines())}
    assert unpack(pack(states)) == states


def test_shares_balance_events_and_keep_every_partition_once():
    sizes = {0: 900, 1: 100, 2: 500, 3: 450, 4: 50, 5: 0}
    shares = _shares(sizes, 2)
    assert sorted(p for share in shares for p in share) == sorted(sizes)
    totals = sorted(sum(sizes[p] for p in share) for share in shares)
    assert totals == [1000, 1000]
    assert _shares({7: 10}, 3) == [[7]]  # no empty shares
