"""Trainers' names become MetricPoint's canonical fields; nothing else is dropped."""

from __future__ import annotations

import math

import pytest

from posttrain.events.aliases import canonical_fields, to_point
from posttrain.events.metricfile import LineError, point_from_record


class _Scalar:
    """Stands for a torch/numpy scalar: numbers arrive through ``item()``."""

    def __init__(self, value: float) -> None:
        self._value = value

    def item(self) -> float:
        return self._value


def test_seed_names_map_to_canonical_fields_and_unknown_names_go_to_custom():
    point = to_point(
        7,
        0.5,
        100.0,
        {
            "policy_loss": 0.3,
            "value_loss": 0.2,
            "reward_mean": 1.5,
            "reward_std": 0.4,
            "kl_divergence": 0.01,
            "grad_norm_actor": 2.5,
            "tokens_per_second": 900,
            "gpu_memory_allocated_gib": 12.0,
            "my_metric": "warm",
        },
    )
    assert (point.step, point.epoch, point.timestamp) == (7, 0.5, 100.0)
    assert point.policy_loss == 0.3 and point.value_loss == 0.2
    assert point.reward_mean == 1.5 and point.reward_std == 0.4
    assert point.kl_divergence == 0.01
    assert point.grad_norm == 2.5
    assert point.tokens_per_second == 900.0
    assert point.gpu_memory_allocated_gb == 12.0
    assert point.custom == {"my_metric": "warm"}


def test_trl_grpo_names_are_mapped_and_the_rest_kept():
    canonical, custom = canonical_fields(
        {
            "loss": 0.1,
            "grad_norm": 0.7,
            "learning_rate": 1e-4,
            "reward": 0.6,
            "reward_std": 0.2,
            "frac_reward_zero_std": 0.5,
            "kl": 0.02,
            "entropy": 1.1,
            "completions/mean_length": 3.0,
            "clip_ratio/region_mean": 0.0,
            "num_tokens": 1234,
        }
    )
    assert canonical == {
        "loss": 0.1,
        "grad_norm": 0.7,
        "learning_rate": 1e-4,
        "reward_mean": 0.6,
        "reward_std": 0.2,
        "kl_divergence": 0.02,
        "entropy": 1.1,
        "response_length_mean": 3.0,
        "clip_frac": 0.0,
    }
    assert custom == {"frac_reward_zero_std": 0.5, "num_tokens": 1234}


def test_a_losing_alias_is_kept_under_custom_not_dropped():
    canonical, custom = canonical_fields({"critic/score/mean": 1.0, "critic/rewards/mean": 0.9})
    assert canonical == {"reward_mean": 1.0}
    assert custom == {"critic/rewards/mean": 0.9}


def test_nan_loss_stays_nan():
    point = to_point(1, None, 0.0, {"loss": float("nan"), "grad_norm": float("inf")})
    assert point.loss is not None and math.isnan(point.loss)
    assert point.grad_norm == math.inf


def test_tensor_like_scalars_are_unwrapped_and_non_numbers_under_canonical_names_kept():
    point = to_point(1, None, 0.0, {"loss": _Scalar(0.25), "learning_rate": "cosine"})
    assert point.loss == 0.25
    assert point.learning_rate is None
    assert point.custom == {"learning_rate": "cosine"}


def test_verl_file_logger_record():
    point = point_from_record(
        {
            "step": 3,
            "data": {
                "actor/pg_loss": -0.05,
                "actor/grad_norm": 0.9,
                "critic/score/mean": 0.4,
                "actor/ppo_kl": 0.001,
                "actor/lr": 1e-6,
                "response_length/mean": 120.0,
                "perf/throughput": 5000.0,
                "timing_s/gen": 1.2,
            },
        },
        default_timestamp=42.0,
    )
    assert point is not None
    assert point.step == 3 and point.timestamp == 42.0
    assert point.loss == -0.05 and point.policy_loss == -0.05
    assert point.grad_norm == 0.9 and point.reward_mean == 0.4
    assert point.kl_divergence == 0.001 and point.learning_rate == 1e-6
    assert point.response_length_mean == 120.0 and point.tokens_per_second == 5000.0
    assert point.custom == {"timing_s/gen": 1.2}


def test_project_record_keeps_its_own_custom_and_timestamp():
    point = point_from_record(
        {"job_id": "j", "step": 2, "timestamp": 5.0, "loss": "NaN", "custom": {"x": 1}}, 0.0
    )
    assert point is not None
    assert point.timestamp == 5.0
    assert point.loss is not None and math.isnan(point.loss)
    assert point.custom == {"x": 1}


def test_record_without_step_is_not_a_point():
    for record in ({"loss": 1.0}, {"step": "three"}, {"step": 2.5}):
        with pytest.raises(LineError, match="'step' must be an integer"):
            point_from_record(record, 0.0)
