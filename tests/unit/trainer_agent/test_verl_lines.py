"""Lines of verl's ``file`` logger become canonical metric points.

verl's ``FileLogger.log(data, step)`` writes ``{"step": step, "data": data}`` per line; older
releases wrote it with Python's json (bare ``NaN``/``Infinity``), newer ones with orjson (a
non-finite float becomes ``null``). Both are read here, as bytes, the way the tailer reads them.
"""

from __future__ import annotations

import json
import math

import orjson
import pytest

from posttrain.events.metricfile import LineError, parse_line

# One PPO step as verl's RayPPOTrainer logs it (names from verl/trainer/ppo/ray_trainer.py and
# metric_utils.py), written by Python's json.dumps.
_PPO_STEP = (
    b'{"step": 7, "data": {"training/global_step": 7, "training/epoch": 2, '
    b'"actor/pg_loss": NaN, "actor/grad_norm": Infinity, "actor/entropy": -Infinity, '
    b'"actor/ppo_kl": 0.002, "actor/pg_clipfrac": 0.1, "actor/lr": 1e-06, '
    b'"critic/vf_loss": 0.3, "critic/score/mean": 0.25, "critic/rewards/mean": 0.2, '
    b'"response_length/mean": 88.5, "perf/throughput": 1234.5, '
    b'"perf/max_memory_allocated_gb": 40.1, "timing_s/gen": 1.5}, "elapsed_seconds": 12.5}'
)


def test_python_json_line_with_nan_and_infinity_literals():
    point = parse_line(_PPO_STEP, default_timestamp=100.0)
    assert point is not None
    assert point.step == 7 and point.epoch == 2.0 and point.timestamp == 100.0
    assert point.loss is not None and math.isnan(point.loss)
    assert point.policy_loss is not None and math.isnan(point.policy_loss)
    assert point.grad_norm == math.inf and point.entropy == -math.inf
    assert point.kl_divergence == 0.002 and point.clip_frac == 0.1
    assert point.learning_rate == 1e-6 and point.value_loss == 0.3
    # The raw score wins reward_mean; the post-KL reward stays under custom.
    assert point.reward_mean == 0.25
    assert point.response_length_mean == 88.5 and point.tokens_per_second == 1234.5
    assert point.gpu_memory_allocated_gb == 40.1
    assert point.custom == {
        "training/global_step": 7,
        "critic/rewards/mean": 0.2,
        "timing_s/gen": 1.5,
        "elapsed_seconds": 12.5,
    }


def test_orjson_line_reads_null_as_nan():
    line = orjson.dumps({"step": 3, "data": {"actor/pg_loss": math.nan, "actor/lr": 1e-6}})
    assert b"null" in line  # what verl's orjson writer does with a NaN
    point = parse_line(line, 0.0)
    assert point is not None
    assert point.loss is not None and math.isnan(point.loss)
    assert point.learning_rate == 1e-6 and point.epoch is None


def test_nested_names_and_values_kept_under_custom():
    line = json.dumps(
        {
            "step": 1,
            "data": {
                "val-core/openai/gsm8k/reward/mean@1": 0.5,
                "val/loss": 1.25,
                "train/loss": 2.0,
                "train/lr": 1e-5,
                "epoch": 0,
            },
            "elapsed_seconds": 3,
            "host": {"name": "gpu-1"},
        }
    ).encode()
    point = parse_line(line, 0.0)
    assert point is not None
    assert point.loss == 2.0 and point.learning_rate == 1e-5 and point.eval_loss == 1.25
    assert point.epoch == 0.0
    assert point.custom == {
        "val-core/openai/gsm8k/reward/mean@1": 0.5,
        "elapsed_seconds": 3,
        "host": {"name": "gpu-1"},
    }


def test_a_serialised_point_keeps_nan_and_elapsed_seconds():
    point = parse_line(_PPO_STEP, 0.0)
    assert point is not None
    wire = json.loads(point.model_dump_json())
    assert wire["loss"] == "NaN" and wire["grad_norm"] == "Infinity"
    assert wire["epoch"] == 2.0 and wire["custom"]["elapsed_seconds"] == 12.5


def test_a_line_without_a_step_is_not_a_point():
    for line in (b'{"data": {"actor/pg_loss": 1.0}}', b'{"step": NaN, "data": {}}'):
        with pytest.raises(LineError, match="'step' must be an integer"):
            parse_line(line, 0.0)
