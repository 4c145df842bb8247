"""Golden histories: committed event logs (exact Kafka bytes, some written by older schema
versions) must replay to the states recorded with them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.events import decode
from posttrain.events.views import EnvelopeView, ViewDecoder
from posttrain.orchestrator.core.state import fold
from posttrain.orchestrator.core.view import pipeline_view

GOLDEN = Path(__file__).parent / "golden"
NAMES = sorted(p.name.removesuffix(".jsonl") for p in GOLDEN.glob("*.jsonl"))


def test_there_are_golden_histories():
    assert set(NAMES) >= {
        "seed_pipeline",
        "failure_and_resume",
        "lost_agent",
        "actions",
        "stage_accepts",
        "slots",
    }


@pytest.mark.parametrize("name", NAMES)
def test_golden_history_replays_to_its_recorded_state(name):
    events = [decode(line.encode()) for line in (GOLDEN / f"{name}.jsonl").read_text().splitlines()]
    states = fold(events)
    assert len(states) == 1
    (state,) = states.values()
    expected = json.loads((GOLDEN / f"{name}.expected.json").read_text())
    assert json.loads(json.dumps(pipeline_view(state))) == expected
    # replaying twice changes nothing
    assert pipeline_view(fold(events)[state.pipeline_id]) == pipeline_view(state)


@pytest.mark.parametrize("name", NAMES)
def test_golden_history_read_as_views_folds_to_the_same_state(name):
    lines = [line.encode() for line in (GOLDEN / f"{name}.jsonl").read_text().splitlines()]
    views = ViewDecoder()
    as_views = [views.decode(line) for line in lines]
    assert any(isinstance(e, EnvelopeView) for e in as_views)
    assert fold(as_views) == fold([decode(line) for line in lines])


def test_v1_events_in_a_golden_log_are_upcast():
    lines = (GOLDEN / "failure_and_resume.jsonl").read_text().splitlines()
    v1 = [json.loads(line) for line in lines if '"type":"StageFailed","version":1' in line]
    assert len(v1) == 2
    assert decode(json.dumps(v1[0]).encode()).data.kind == "error"


def test_seed_pipeline_resolved_references_and_succeeded():
    expected = json.loads((GOLDEN / "seed_pipeline.expected.json").read_text())
    assert expected["status"] == "succeeded"
    assert expected["layers"] == [
        ["preprocess"],
        ["train_sft"],
        ["train_rl_1", "train_rl_2"],
        ["evaluate"],
    ]


def test_the_actions_history_says_why_each_refused_action_was_refused():
    lines = (GOLDEN / "actions.jsonl").read_text().splitlines()
    refused = {
        e.data.action_id: e.data
        for e in map(decode, map(str.encode, lines))
        if e.type == "ActionRefused"
    }
    assert refused["ghost"].reason == "pipeline 'golden-actions' has no stage 'nope'"
    assert refused["verl-pause"].reason.startswith("a command stage cannot take 'pause'")
    assert refused["ckpt"].agent_id is not None  # refused by the agent
    state = fold([decode(line.encode()) for line in lines])["golden-actions"]
    assert state.stages["train"].last_checkpoint == "/c/100"  # not the poisoned /c/200, /c/201


def test_the_slots_history_never_runs_more_than_two_stages_at_once():
    events = [decode(line.encode()) for line in (GOLDEN / "slots.jsonl").read_text().splitlines()]
    running: set[str] = set()
    most = 0
    for e in events:
        if e.type == "StageDispatched":
            running.add(e.data.stage)
        elif e.type in ("StageSucceeded", "StageRejected"):
            running.discard(e.data.stage)
        most = max(most, len(running))
    assert most == 2
    dispatched = [e.data.stage for e in events if e.type == "StageDispatched"]
    assert dispatched.count("f1") == 2  # rejected once in a race, then placed again
    assert len(dispatched) == 10  # root, seven, f1 again, join: no reject loop
