"""The labelled corpus of real tiny runs (bench/data/detect_corpus): it loads, every series is
labelled, it covers what the issue asks for, and the shipped rules and policy meet their goals
on it (bench.detect_quality's figures)."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from bench.detect_corpus import (
    ALGORITHMS,
    CORPUS_DIR,
    FAULT_RULES,
    from_json,
    iter_files,
    load,
    to_json,
)
from bench.detect_quality import score
from posttrain.diagnostics.core import DetectorConfig, JobState, diagnose_points

CORPUS = load()
BY_NAME = {s.name: s for s in CORPUS}


def test_every_file_loads_as_strict_json_and_is_labelled():
    files = list(iter_files())
    assert len(files) == len(CORPUS) >= 25
    for path in files:
        data = json.loads(path.read_text(), parse_constant=pytest.fail)  # no bare NaN
        series = from_json(data)
        assert path.stem == series.name
        assert series.algorithm in ALGORITHMS
        assert len(series.points) >= 60
        steps = [p.step for p in series.points]
        assert steps == sorted(set(steps)), series.name
        for fault in series.faults:
            assert fault.kind in FAULT_RULES
            assert steps[0] < fault.step <= steps[-1], series.name
            assert fault.until is None or fault.step <= fault.until <= steps[-1]
        assert series.healthy == (not series.faults)
        assert series.healthy or series.injection, series.name
        assert to_json(from_json(to_json(series))) == to_json(series)  # round trip
    size = sum(p.stat().st_size for p in CORPUS_DIR.glob("*.json"))
    assert size < 400_000


def test_the_corpus_covers_every_trainer_and_fault_kind():
    healthy = [s for s in CORPUS if s.healthy]
    for algorithm in ("sft", "dpo", "grpo"):
        runs = [s for s in healthy if s.algorithm == algorithm]
        assert len({s.seed for s in runs}) >= 3, algorithm
        assert len({s.learning_rate for s in runs}) >= 2, algorithm
    kinds = Counter(f.kind for s in CORPUS for f in s.faults)
    required = {"nan", "divergence", "kl_blowup", "reward_collapse", "entropy_collapse"}
    assert required | {"loss_spike"} <= set(kinds)


def test_healthy_series_are_finite_and_faulty_ones_show_their_fault():
    for series in CORPUS:
        first = series.fault_step
        for point in series.points:
            if first is None or point.step < first:
                values = [point.loss, point.grad_norm, point.kl_divergence, point.reward_mean]
                assert all(v is None or math.isfinite(v) for v in values), series.name
    nan_run = BY_NAME["sft-nan-s0"]
    after = [p.loss for p in nan_run.points if p.step >= nan_run.faults[0].step]
    assert after and all(math.isnan(v) for v in after)
    broken = BY_NAME["grpo-reward-broken-s1"]
    assert all(p.reward_std == 0.0 for p in broken.points if p.step > broken.faults[0].step)


def test_the_shipped_rules_meet_the_goals_on_the_corpus():
    report = score(CORPUS)
    assert report.missed == []
    assert report.recall_on_faults == 1.0
    assert report.false_actions_on_healthy == []
    assert report.false_actions_before_fault == []
    assert report.lines[-1] == "false_actions_on_healthy: 0"


def test_the_demo_sft_run_keeps_its_learning_rate():
    # The healthy SFT run of `make demo` has a single 8x gradient spike (step 40 here): no
    # gradient explosion, so no learning-rate cut.
    demo = BY_NAME["sft-demo"]
    spike = max(demo.points, key=lambda p: p.grad_norm or 0.0)
    assert spike.grad_norm is not None and spike.grad_norm > 5 * 2.5
    assert diagnose_points(list(demo.points)) == []


@pytest.mark.parametrize(
    "name", ["grpo-lr30x-s2", "loop-explode-lr0.05", "dpo-nan-s1", "sft-shard-s1"]
)
def test_job_state_round_trips_through_json_anywhere_in_a_real_run(name):
    points = list(BY_NAME[name].points)
    config = DetectorConfig()
    expected = [a.to_dict() for a in diagnose_points(points, config)]
    assert expected, name
    for cut in range(1, len(points), 7):
        state = JobState(config)
        got = [a.to_dict() for p in points[:cut] for a in state.observe(p)]
        restored = JobState.from_dict(
            config, json.loads(json.dumps(state.to_dict(), allow_nan=False))
        )
        got += [a.to_dict() for p in points[cut:] for a in restored.observe(p)]
        assert json.dumps(got, sort_keys=True, default=str) == json.dumps(
            expected, sort_keys=True, default=str
        ), (name, cut)
