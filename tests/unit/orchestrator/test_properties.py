"""Properties over random DAGs and random agent behaviour."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.orchestrator.core.decide import AgentView
from posttrain.orchestrator.core.state import ACTIVE, StageStatus
from tests.unit.orchestrator.sim import World

TERMINAL = {"succeeded", "failed", "cancelled"}


@st.composite
def dags(draw):
    n = draw(st.integers(1, 9))
    stages = []
    for i in range(n):
        deps = draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set()
        stages.append(
            {
                "name": f"s{i}",
                "task": "command",
                "params": {"argv": ["x"]},
                "depends_on": [f"s{d}" for d in sorted(deps)],
                "retries": {"max_attempts": draw(st.integers(1, 3)), "backoff_s": 5},
            }
        )
    return stages


@settings(max_examples=150, deadline=None)
@given(dags(), st.data())
def test_any_agent_behaviour_ends_in_a_terminal_state(stages, data):
    w = World(agents={"a1": AgentView("a1", 4, 4), "a2": AgentView("a2", 4, 4)})
    w.submit(stages)
    order: list[str] = []
    for _ in range(400):
        if w.status() in TERMINAL:
            break
        active = [s for s in w.state.stages.values() if s.status in ACTIVE]
        if not active:
            w.tick(10)  # only backoff or waiting left: let time pass
            continue
        stage = data.draw(st.sampled_from(sorted(s.name for s in active)))
        outcome = data.draw(st.sampled_from(["succeed", "succeed", "fail", "reject", "lose"]))
        if outcome == "succeed":
            w.succeed(stage)
            order.append(stage)
        elif outcome == "fail":
            w.fail(stage)
        elif outcome == "reject":
            w.reject(stage)
            w.tick(1)
        else:
            w.tick(30, silent=[w.run_for(stage).agent_id])
    assert w.status() in TERMINAL, w.view()
    # every stage that succeeded ran after all of its dependencies had succeeded
    finished = {name: i for i, name in enumerate(order)}
    for spec in stages:
        if spec["name"] in finished:
            assert all(finished[d] < finished[spec["name"]] for d in spec["depends_on"])
    # dispatch order respects dependencies too
    for run in w.runs():
        deps = next(s["depends_on"] for s in stages if s["name"] == run.stage)
        assert all(d in finished for d in deps)
    # replaying the log gives the live state, twice over
    assert w.replayed_view() == w.view() == w.replayed_view()
    # and so does replay as the shell runs it: through the wire, read as views
    assert w.replayed_from_the_wire() == w.state
    # the same (stage, attempt) is never dispatched twice except to re-place a rejection
    rejected = {(e.data.stage, e.data.attempt) for e in w.log if e.type == "StageRejected"}
    seen = [(r.stage, r.attempt) for r in w.runs()]
    assert all(seen.count(k) == 1 for k in seen if k not in rejected)
    if w.status() == "succeeded":
        assert all(s.status == StageStatus.SUCCEEDED for s in w.state.stages.values())
