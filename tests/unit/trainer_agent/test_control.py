"""Control commands combined at a step boundary, and failure kinds."""

from __future__ import annotations

from posttrain.trainer_agent.core.control import Rollback, at_step_boundary


def _cmd(type_: str, action_id: str, **fields):
    return {"type": type_, "action_id": action_id, **fields}


def test_each_command_is_applied_once_and_reported():
    directive = at_step_boundary(
        [
            _cmd("AdjustLearningRate", "a", factor=0.1),
            _cmd("AdjustLearningRate", "b", factor=0.5),
            _cmd("ForceCheckpoint", "c"),
            _cmd("AdjustLearningRate", "a", factor=0.1),  # the same command again
        ]
    )
    assert directive.lr_factor == 0.1 * 0.5
    assert directive.save and directive.stop is None
    assert [(a.action_id, a.action) for a in directive.applied] == [
        ("a", "adjust_learning_rate"),
        ("b", "adjust_learning_rate"),
        ("c", "force_checkpoint"),
    ]
    again = at_step_boundary([_cmd("ForceCheckpoint", "c")], frozenset({"c"}))
    assert again.empty


def test_pause_checkpoints_and_stops_cancel_stops_without_a_checkpoint():
    pause = at_step_boundary([_cmd("PauseStage", "p")])
    assert pause.stop == "pause" and pause.save
    cancel = at_step_boundary([_cmd("PauseStage", "p"), _cmd("CancelStage", "x")])
    assert cancel.stop == "cancel" and not cancel.save


def test_a_factor_that_is_not_positive_is_refused_not_applied():
    directive = at_step_boundary(
        [_cmd("AdjustLearningRate", "z", factor=0), _cmd("AdjustLearningRate", "s", factor="x")]
    )
    assert not directive.applied and directive.lr_factor == 1.0
    assert [(r.action_id, r.reason) for r in directive.refused] == [
        ("z", "factor 0 is not a positive number"),
        ("s", "factor 'x' is not a positive number"),
    ]


def test_a_rollback_is_handed_to_the_loop_with_where_to_go_back_to():
    directive = at_step_boundary(
        [_cmd("RollbackStage", "r", step=30, rollback_steps=10, skip_batches=4, reason="spike")]
    )
    assert directive.rollback == Rollback("r", 30, 10, 4, "spike")
    assert not directive.applied and not directive.empty  # applied once the loop has gone back


def test_one_rollback_per_boundary_the_one_that_goes_back_furthest():
    directive = at_step_boundary(
        [_cmd("RollbackStage", "late", step=40), _cmd("RollbackStage", "early", step=25)]
    )
    assert directive.rollback is not None and directive.rollback.action_id == "early"
    assert [(r.action_id, r.reason) for r in directive.refused] == [
        ("late", "rollback early covers it")
    ]
