"""The resilience suite's invariants catch what they claim to: each check, fed a run that breaks
it, names the break (and says nothing of a run that keeps it)."""

from __future__ import annotations

from types import SimpleNamespace as NS

from posttrain.testing import invariants

P = "pipe"


def event(type_: str, id_: str, **data) -> NS:
    return NS(type=type_, id=id_, data=NS(pipeline_id=P, **data))


def clean_log() -> list[tuple[int, NS]]:
    return [
        (0, event("PipelineSubmitted", "e1")),
        (0, event("StageDispatched", "e2", stage="sft", attempt=1)),
        (0, event("StageStarted", "e3", stage="sft", attempt=1)),
        (0, event("StageSucceeded", "e4", stage="sft", attempt=1)),
        (0, event("PipelineSucceeded", "e5")),
    ]


def test_a_clean_log_passes_every_event_check():
    events = [e for _, e in clean_log()]
    witness = [{"stage": "sft", "attempt": 1, "launch": 1, "resume_from": None}]

    assert invariants.pipeline_succeeded(events, P) == []
    assert invariants.events_unique_and_ordered(clean_log(), P) == []
    assert invariants.no_attempt_ran_twice(witness, events) == []
    assert invariants.actions_answered(events, P) == []


def test_a_duplicate_event_and_an_out_of_order_attempt_are_named():
    log = clean_log()
    log.insert(2, log[1])  # StageDispatched e2 twice
    log[3], log[4] = log[4], log[3]  # succeeded before started

    problems = invariants.events_unique_and_ordered(log, P)

    assert any("e2 is on the log 2 times" in p for p in problems), problems
    assert any("sft attempt 1: events in the order" in p for p in problems), problems


def test_a_dispatch_the_agent_rejected_and_the_next_one_are_in_order():
    log = clean_log()
    log[2:2] = [
        (0, event("StageRejected", "r1", stage="sft", attempt=1)),
        (0, event("StageDispatched", "e2b", stage="sft", attempt=1)),
    ]
    again = clean_log()
    again.insert(2, (0, event("StageDispatched", "e2c", stage="sft", attempt=1)))

    assert invariants.events_unique_and_ordered(log, P) == []
    assert invariants.events_unique_and_ordered(again, P) != []


def test_an_attempt_started_twice_is_named_but_a_resume_is_not():
    events = [e for _, e in clean_log()]
    resumed = [
        {"stage": "sft", "attempt": 1, "launch": 1, "resume_from": None},
        {"stage": "sft", "attempt": 1, "launch": 2, "resume_from": "/ckpt-10"},
    ]
    twice = [
        {"stage": "sft", "attempt": 1, "launch": 1, "resume_from": None},
        {"stage": "sft", "attempt": 1, "launch": 1, "resume_from": None},
    ]

    assert invariants.no_attempt_ran_twice(resumed, events) == []
    assert invariants.no_attempt_ran_twice(twice, events) == [
        "sft attempt 1 started 2 times",
        "sft attempt 1 launch 1 started 2 times",
    ]
    assert invariants.no_attempt_ran_twice([], events) == [
        "sft attempt 1 succeeded with no witness"
    ]


def test_stored_points_are_compared_with_the_distinct_points_emitted():
    sent = [
        NS(job_id="j", source="s", first_seq=0, points=[NS(step=1), NS(step=2)]),
        NS(job_id="j", source="s", first_seq=0, points=[NS(step=1), NS(step=2)]),  # re-sent
    ]
    exact = {
        "j": [NS(source="s", seq=0, point=NS(step=1)), NS(source="s", seq=1, point=NS(step=2))]
    }
    short = {"j": exact["j"][:1]}
    doubled = {"j": [*exact["j"], exact["j"][0]]}

    assert invariants.metrics_exactly_once(sent, exact, ["j"]) == []
    assert "steps missing [2]" in invariants.metrics_exactly_once(sent, short, ["j"])[0]
    assert (
        "point ('s', 0) stored 2 times" in invariants.metrics_exactly_once(sent, doubled, ["j"])[0]
    )


def test_an_alert_sent_twice_and_an_action_without_outcome_are_named():
    requested = event(
        "ActionRequested", "a1", action_id="x", action="pause", stage="sft", attempt=1
    )
    applied = event("ActionApplied", "a2", action_id="x")

    assert invariants.alerts_once({"an-1": 1, "an-2": 2}) == [
        "alert for anomaly an-2 delivered 2 times"
    ]
    assert invariants.actions_answered([requested, applied], P) == []
    assert invariants.actions_answered([requested], P) == [
        "action x (pause on sft attempt 1) requested, no outcome"
    ]
    assert invariants.pipeline_succeeded([requested], P) == [
        "pipeline pipe ended never, not once PipelineSucceeded"
    ]


def test_a_stage_waiting_for_room_has_no_attempt_and_breaks_no_order():
    # The orchestrator records why a ready stage is not placed (every agent's slots taken)
    # before any attempt exists; found when placement began to respect slots.
    log = clean_log()
    log.insert(1, (0, event("StageWaiting", "w1", stage="sft", reason="no free slot")))

    assert invariants.events_unique_and_ordered(log, P) == []
