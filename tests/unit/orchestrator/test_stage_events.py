"""What the read-model projection relies on to write only the stage rows a batch changed: an
event that names a stage changes that stage's view alone, in every golden history."""

from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.events import decode
from posttrain.orchestrator.core.state import PipelineState, apply
from posttrain.orchestrator.core.view import stage_view

GOLDEN = Path(__file__).parent / "golden"
NAMES = sorted(p.name.removesuffix(".jsonl") for p in GOLDEN.glob("*.jsonl"))


@pytest.mark.parametrize("name", NAMES)
def test_an_event_naming_a_stage_changes_no_other_stage(name):
    lines = (GOLDEN / f"{name}.jsonl").read_text().splitlines()
    state: PipelineState | None = None
    named = 0
    for line in lines:
        envelope = decode(line.encode())
        state = state or PipelineState(envelope.data.pipeline_id)
        before = {n: stage_view(s) for n, s in state.stages.items()}
        apply(state, envelope)
        stage = getattr(envelope.data, "stage", None)
        if not isinstance(stage, str):
            continue
        named += 1
        after = {n: stage_view(s) for n, s in state.stages.items()}
        assert {n: v for n, v in after.items() if n != stage} == {
            n: v for n, v in before.items() if n != stage
        }, f"{envelope.type} of {stage} changed another stage"
    assert named > 0
