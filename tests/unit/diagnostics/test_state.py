"""The per-job state: it serializes mid-run without changing what is raised, ignores redelivered
points, re-arms after a rollback, and stays quiet on healthy runs."""

from __future__ import annotations

import json
import math

import pytest

from posttrain.diagnostics.core import (
    AnomalyType,
    ConfigBook,
    DetectorConfig,
    JobState,
    diagnose_points,
)
from posttrain.diagnostics.core.config import LossSpikeConfig
from tests.unit.diagnostics.series import healthy_long_run, pt, recorded, troubled_run

T = AnomalyType


def test_troubled_run_raises_each_kind_once():
    kinds = {a.anomaly_type for a in diagnose_points(troubled_run())}
    # An RL run (it reports a reward spread and a KL): its loss spike at step 120 is not judged
    # (a policy-gradient loss is heavy-tailed; LossSpikeConfig.skip_sampled_rl).
    assert T.LOSS_SPIKE not in kinds
    assert {
        T.GRAD_EXPLOSION,
        T.NON_FINITE,
        T.KL_BLOWUP,
        T.REWARD_COLLAPSE,
        T.ENTROPY_COLLAPSE,
        T.NEW_BEST_REWARD,
    } <= kinds


@pytest.mark.parametrize("cut", [1, 50, 119, 120, 171, 299])
def test_state_round_trips_through_json_mid_run(cut):
    points = troubled_run()
    config = DetectorConfig()
    expected = [a.to_dict() for a in diagnose_points(points, config)]
    state = JobState(config)
    got = [a.to_dict() for p in points[:cut] for a in state.observe(p)]
    saved = json.dumps(state.to_dict(), allow_nan=False)  # strict JSON: no NaN, no inf
    restored = JobState.from_dict(config, json.loads(saved))
    assert restored.to_dict() == state.to_dict()
    got += [a.to_dict() for p in points[cut:] for a in restored.observe(p)]
    assert json.dumps(got, sort_keys=True, default=str) == json.dumps(
        expected, sort_keys=True, default=str
    )


def test_redelivered_points_are_ignored():
    state = JobState(DetectorConfig())
    points = [pt(i, loss=1.0) for i in range(1, 4)] + [pt(4, loss=math.nan)]
    first = state.observe_many(points, source="cb", first_seq=0)
    assert [a.anomaly_type for a in first] == [T.NON_FINITE]
    before = state.to_dict()
    assert state.observe_many(points, source="cb", first_seq=0) == []
    assert state.to_dict() == before
    assert state.seen("cb", 3) and not state.seen("cb", 4) and not state.seen("other", 0)


def test_steps_going_back_start_a_new_generation_that_re_raises():
    state = JobState(DetectorConfig())
    a1 = state.observe_many([pt(1, loss=1.0), pt(2, loss=math.nan)], source="s")
    a2 = state.observe_many([pt(1, loss=1.0), pt(2, loss=math.nan)], source="s", first_seq=2)
    assert [(a.step, a.generation) for a in a1 + a2] == [(2, 0), (2, 1)]
    assert a1[0].id_for("job") != a2[0].id_for("job")
    assert a1[0].id_for("job") == a1[0].id_for("job")


def test_restore_with_a_changed_configuration_keeps_what_fits():
    state = JobState(DetectorConfig())
    state.observe_many([pt(i, loss=2.0) for i in range(1, 101)])
    smaller = DetectorConfig(loss_spike=LossSpikeConfig(window=30, min_points=10))
    restored = JobState.from_dict(smaller, state.to_dict())
    assert restored.observe(pt(101, loss=3.0))[0].window["points"] == 30


@pytest.mark.parametrize("name", ["sft_tiny.json", "grpo_tiny.json"])
def test_recorded_healthy_tiny_runs_raise_nothing(name):
    points = recorded(name)
    assert len(points) >= 100
    anomalies = diagnose_points(points)
    assert [a for a in anomalies if a.severity != "info"] == []
    # Only new reward highs (the checkpoint trigger), and only where there is a reward.
    assert {a.anomaly_type for a in anomalies} <= {T.NEW_BEST_REWARD}


def test_long_healthy_synthetic_run_raises_nothing_but_reward_highs():
    anomalies = diagnose_points(healthy_long_run())
    assert [(a.anomaly_type, a.step) for a in anomalies if a.severity != "info"] == []


def test_config_book_resolves_per_pipeline_overrides():
    book = ConfigBook.from_dict(
        {
            "default": {"detectors": {"loss_spike": {"k": 4}}},
            "pipelines": {
                "p1": {"detectors": {"loss_spike": {"window": 64}}, "actions": {"dry_run": True}}
            },
        }
    )
    p1 = book.for_pipeline("p1")
    assert (p1.detectors.loss_spike.k, p1.detectors.loss_spike.window) == (4, 64)
    assert p1.actions.dry_run and not book.for_pipeline("p2").actions.dry_run
    assert book.for_pipeline(None).detectors.loss_spike.window == 64
    with pytest.raises(ValueError, match=r"(?s)p3.*windw"):
        ConfigBook.from_dict({"pipelines": {"p3": {"detectors": {"loss_spike": {"windw": 3}}}}})
