"""The backtest fold: the stream's detectors and policy, step by step, on a job's points."""

from __future__ import annotations

from posttrain.diagnostics.batch import diagnose
from posttrain.diagnostics.core.backtest import JobRoute, backtest_job
from posttrain.diagnostics.core.config import ConfigBook
from posttrain.diagnostics.core.ids import action_id
from posttrain.events.messages.pipeline import RequestAction
from tests.unit.diagnostics.backtest_runs import (
    FIRST_EXPLOSION,
    NAN_STEP,
    RAISED_AFTER,
    SECOND_EXPLOSION,
    explosions_then_nan,
)

ROUTE = JobRoute("job-1", "pipe-1", "sft", 1)


def _sourced(points):
    return [("callback", i, p) for i, p in enumerate(points)]


def _by_step(result):
    return {(s.step, s.anomaly.anomaly_type): s for s in result.steps}


def _explosion(steps, start):
    """The explosion raised for the high steps from ``start``: at the third of them (the rule
    wants three high steps among five)."""
    (found,) = [
        s
        for (step, kind), s in steps.items()
        if kind == "grad_explosion" and start <= step < start + 5
    ]
    assert found.step == start + RAISED_AFTER
    return found


def test_each_anomaly_with_what_the_default_policy_would_do():
    points = explosions_then_nan()
    result = backtest_job(ROUTE, _sourced(points), ConfigBook().default)
    steps = _by_step(result)
    assert result.points == len(points)

    first = _explosion(steps, FIRST_EXPLOSION)
    assert first.outcome == "request"
    assert isinstance(first.action, RequestAction)
    assert first.action.action == "adjust_learning_rate" and first.action.factor == 0.1
    assert (first.action.pipeline_id, first.action.stage, first.action.attempt) == (
        "pipe-1",
        "sft",
        1,
    )
    # The id the stream would have sent the request under.
    assert first.action.action_id == action_id(first.anomaly.anomaly_id, "adjust_learning_rate")

    second = _explosion(steps, SECOND_EXPLOSION)
    assert second.outcome == "none" and second.action is None
    assert second.note == "within the rule's cooldown"

    nan = steps[(NAN_STEP, "nan_inf")]
    assert nan.outcome == "request" and nan.action.action == "pause"
    assert result.action_counts()["request pause"] == 1


def test_the_backtest_raises_what_the_batch_diagnosis_raises():
    points = explosions_then_nan()
    config = ConfigBook().default
    result = backtest_job(ROUTE, _sourced(points), config)
    found = diagnose(points, config.detectors)
    assert [(s.step, s.anomaly.anomaly_type) for s in result.steps] == [
        (a.step, a.anomaly_type.value) for a in found
    ]
    assert [s.anomaly.anomaly_id for s in result.steps] == [a.id_for("job-1") for a in found]


def test_a_policy_file_changes_what_would_be_done():
    book = ConfigBook.from_dict(
        {
            "default": {
                "actions": {
                    "dry_run": True,
                    "rules": {"grad_explosion": None, "nan_inf": {"action": "cancel"}},
                }
            }
        }
    )
    steps = _by_step(backtest_job(ROUTE, _sourced(explosions_then_nan()), book.default))
    explosion = _explosion(steps, FIRST_EXPLOSION)
    assert explosion.outcome == "none"
    assert explosion.note == "no action rule for this anomaly type"
    nan = steps[(NAN_STEP, "nan_inf")]
    assert nan.outcome == "recommend" and nan.action.action == "cancel"


def test_a_job_outside_a_pipeline_is_only_recommended_actions():
    result = backtest_job(JobRoute("job-2"), _sourced(explosions_then_nan()), ConfigBook().default)
    nan = _by_step(result)[(NAN_STEP, "nan_inf")]
    assert nan.outcome == "recommend"
    assert nan.note.startswith("no pipeline stage to act on")
    doc = result.to_dict()
    assert doc["pipeline_id"] is None
    assert doc["steps"][-1]["anomaly"]["value"] == "NaN"  # JSON has no NaN: the events' spelling
