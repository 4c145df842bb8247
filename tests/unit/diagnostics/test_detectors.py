"""Every rule on synthetic series: it fires where it should, once per episode, and not on the
edge cases that look alike (warm-up, flat series, noise, missing fields)."""

from __future__ import annotations

import math

import pytest

from posttrain.diagnostics.core import AnomalyType, DetectorConfig, JobState, diagnose_points
from posttrain.diagnostics.core.config import (
    EntropyConfig,
    GradConfig,
    KlConfig,
    LengthConfig,
    MemoryConfig,
    NewBestRewardConfig,
    NonFiniteConfig,
    PlateauConfig,
    RewardConfig,
)
from tests.unit.diagnostics.series import noisy, pt, series

T = AnomalyType


def only(cfg: DetectorConfig | None = None, **enabled: object) -> DetectorConfig:
    """A config with every rule off except those given (as their config objects)."""
    base = cfg or DetectorConfig()
    updates = {
        name: getattr(base, name).model_copy(update={"enabled": False})
        for name in DetectorConfig.model_fields
    }
    updates.update(enabled)  # type: ignore[arg-type]
    return base.model_copy(update=updates)


def found(points, cfg=None):
    return [(a.anomaly_type, a.step) for a in diagnose_points(points, cfg)]


# --- NaN / Inf -------------------------------------------------------------------------------


def test_nan_loss_raises_critical_at_its_step_once_per_episode():
    points = series("loss", [1.0, 0.9, math.nan, math.nan, 0.8, math.nan])
    anomalies = diagnose_points(points)
    assert [(a.anomaly_type, a.step) for a in anomalies] == [(T.NON_FINITE, 3), (T.NON_FINITE, 6)]
    first = anomalies[0]
    assert first.severity == "critical" and first.field == "loss" and math.isnan(first.value)
    assert "loss=nan" in first.message and first.suggestions


@pytest.mark.parametrize("field", ["grad_norm", "kl_divergence", "reward_mean", "entropy"])
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_any_core_field_non_finite_raises(field, bad):
    points = [pt(1, loss=1.0), pt(2, loss=1.0, **{field: bad})]
    # An infinite KL is a KL blow-up as well (see the KL tests).
    also = [(T.KL_BLOWUP, 2)] if field == "kl_divergence" and math.isinf(bad) else []
    assert found(points) == [(T.NON_FINITE, 2), *also]


def verl_run(bad: dict[int, dict[str, str]], steps: int = 60) -> list:
    """A verl run as its ``file`` logger writes it (bare NaN/Infinity, as Python's json does),
    read by the agent's line parser."""
    from posttrain.events.metricfile import parse_line

    points = []
    for step in range(1, steps + 1):
        data = {
            "actor/pg_loss": "0.1",
            "actor/grad_norm": "1.0",
            "actor/kl_loss": "0.02",
            "critic/score/mean": "0.5",
            **bad.get(step, {}),
        }
        body = ", ".join(f'"{k}": {v}' for k, v in data.items())
        points.append(parse_line(f'{{"step": {step}, "data": {{{body}}}}}'.encode(), float(step)))
    return points


def test_every_metric_that_turns_non_finite_is_named():
    # The verl run: grad_norm NaN at step 45, then the KL infinite at step 46.
    points = verl_run({45: {"actor/grad_norm": "NaN"}, 46: {"actor/kl_loss": "Infinity"}})
    anomalies = [a for a in diagnose_points(points) if a.anomaly_type == T.NON_FINITE]
    assert [(a.step, a.field) for a in anomalies] == [(45, "grad_norm"), (46, "kl_divergence")]
    assert "grad_norm=nan" in anomalies[0].message
    assert "kl_divergence=inf" in anomalies[1].message
    # The infinite KL is a KL blow-up too.
    kinds = [(a.anomaly_type, a.step) for a in diagnose_points(points)]
    assert (T.KL_BLOWUP, 46) in kinds


def test_non_finite_names_each_metric_once_per_run_of_bad_steps():
    bad = {s: {"actor/pg_loss": "NaN"} for s in range(30, 60)}  # the loss stays NaN
    for s in range(32, 60, 2):  # the gradient norm flickers NaN / finite meanwhile
        bad[s]["actor/grad_norm"] = "NaN"
    bad[40]["actor/kl_loss"] = "-Infinity"
    anomalies = diagnose_points(verl_run(bad, steps=70))
    non_finite = [a for a in anomalies if a.anomaly_type == T.NON_FINITE]
    assert [(a.step, a.field) for a in non_finite] == [
        (30, "loss"),
        (32, "grad_norm"),
        (40, "kl_divergence"),
    ]
    assert "newly non-finite: grad_norm" in non_finite[1].message
    assert "named earlier in this run of bad steps: loss" in non_finite[1].message
    # A clean step ends the run of bad steps: the next NaN is raised again.
    again = verl_run({10: {"actor/pg_loss": "NaN"}, 12: {"actor/pg_loss": "NaN"}}, steps=15)
    assert [a.step for a in diagnose_points(again) if a.anomaly_type == T.NON_FINITE] == [10, 12]


def test_a_point_without_the_watched_fields_does_not_end_a_run_of_bad_steps():
    points = [pt(1, loss=1.0), pt(2, loss=math.nan), pt(3, eval_accuracy=0.5), pt(4, loss=math.nan)]
    assert found(points) == [(T.NON_FINITE, 2)]


def test_non_finite_custom_field_only_when_configured():
    points = [pt(1, loss=1.0, custom={"my_metric": "NaN"})]
    assert found(points) == []
    cfg = DetectorConfig(non_finite=NonFiniteConfig(fields=("loss", "my_metric")))
    assert found(points, cfg) == [(T.NON_FINITE, 1)]


def test_non_finite_disabled_and_missing_fields_raise_nothing():
    cfg = only()
    assert found(series("loss", [math.nan] * 3), cfg) == []
    assert found([pt(i) for i in range(1, 5)]) == []


# --- loss spike ------------------------------------------------------------------------------


def test_loss_spike_above_mean_plus_k_std():
    values = [*noisy(60, 2.0, 0.02), 3.0, *noisy(20, 2.0, 0.02, seed=2)]
    anomalies = diagnose_points(series("loss", values))
    assert [(a.anomaly_type, a.step) for a in anomalies] == [(T.LOSS_SPIKE, 61)]
    window = anomalies[0].window
    assert window["points"] == 60 and abs(window["mean"] - 2.0) < 0.01
    assert window["threshold"] < 3.0


def test_loss_spike_needs_min_points():
    assert found(series("loss", [2.0] * 10 + [50.0])) == []


def test_flat_loss_wiggle_is_not_a_spike_but_a_jump_is():
    flat = [2.0] * 40
    assert found(series("loss", [*flat, 2.002])) == []  # 0.1%: inside the std floor
    assert found(series("loss", [*flat, 2.2])) == [(T.LOSS_SPIKE, 41)]


def test_multi_step_spike_is_one_anomaly_and_the_next_spike_another():
    values = [*noisy(50, 1.0, 0.01), 5.0, 6.0, 5.5, *noisy(30, 1.0, 0.01, seed=3), 4.0]
    assert found(series("loss", values)) == [(T.LOSS_SPIKE, 51), (T.LOSS_SPIKE, 84)]


def test_decreasing_loss_and_a_lasting_new_level_raise_once_at_most():
    decay = [3.0 * math.exp(-i / 100) for i in range(500)]
    assert found(series("loss", decay)) == []
    shifted = noisy(40, 1.0, 0.01) + noisy(200, 2.0, 0.01, seed=4)
    assert found(series("loss", shifted)) == [(T.LOSS_SPIKE, 41)]


# --- KL --------------------------------------------------------------------------------------


def test_kl_above_target_sustained_raises_but_one_step_does_not():
    # No target by default (what trainers call "kl" differs by orders of magnitude): given one,
    # the level is judged against it too.
    cfg = DetectorConfig(kl=KlConfig(target=0.1))
    single = [0.02] * 30 + [0.9] + [0.02] * 10
    assert found(series("kl_divergence", single), cfg) == []
    risen = [0.02] * 30 + [0.5] * 10
    anomalies = diagnose_points(series("kl_divergence", risen), cfg)
    # The median of the last 9 crosses 1.5 x 0.1 on the fifth high point.
    assert [(a.anomaly_type, a.step) for a in anomalies] == [(T.KL_BLOWUP, 35)]
    assert anomalies[0].severity == "critical"  # above target and 7x the median
    assert "target" in anomalies[0].message and "median" in anomalies[0].message


def test_kl_relative_to_rolling_median_without_target():
    values = [0.01] * 40 + [0.2] * 5
    anomalies = diagnose_points(series("kl_divergence", values))  # the default: no target
    assert [(a.anomaly_type, a.step) for a in anomalies] == [(T.KL_BLOWUP, 45)]
    assert anomalies[0].severity == "warning" and anomalies[0].window["median"] == 0.01
    # Two or three high steps in a row are the heavy tail of a small batch's estimate.
    bursts = [0.01] * 40 + [0.3] * 4 + [0.01] * 10 + [0.3, 0.01, 0.3, 0.01, 0.3, 0.01]
    assert found(series("kl_divergence", bursts)) == []


@pytest.mark.parametrize("infinite", [math.inf, -math.inf])
def test_an_infinite_kl_is_a_kl_blow_up(infinite):
    values = [0.02] * 45 + [infinite] + [0.02] * 3
    anomalies = diagnose_points(series("kl_divergence", values))
    assert [(a.anomaly_type, a.step) for a in anomalies] == [
        (T.NON_FINITE, 46),
        (T.KL_BLOWUP, 46),
    ]
    blowup = anomalies[1]
    assert blowup.severity == "critical" and blowup.field == "kl_divergence"
    assert math.isinf(blowup.value) and "infinite" in blowup.message
    # Without history too (the KL's first point), and a NaN KL is only non-finite.
    assert found(series("kl_divergence", [math.inf])) == [(T.NON_FINITE, 1), (T.KL_BLOWUP, 1)]
    assert found(series("kl_divergence", [0.02] * 30 + [math.nan])) == [(T.NON_FINITE, 31)]


def test_an_infinite_kl_that_stays_high_is_one_blow_up():
    values = [0.02] * 45 + [math.inf] + [5.0] * 10 + [0.02] * 100 + [math.inf]
    assert [a for a in found(series("kl_divergence", values)) if a[0] == T.KL_BLOWUP] == [
        (T.KL_BLOWUP, 46),
        (T.KL_BLOWUP, 157),
    ]


def test_kl_small_values_are_not_a_blow_up_whatever_the_ratio():
    cfg = DetectorConfig(kl=KlConfig(target=None))
    values = [0.0001] * 40 + [0.005] * 10  # 50x the median, but below the floor
    assert found(series("kl_divergence", values), cfg) == []


def test_kl_saturated_at_clamp():
    values = [0.05] * 10 + [10.0] * 8
    cfg = DetectorConfig(kl=KlConfig(target=None))
    assert (T.KL_SATURATED, 15) in found(series("kl_divergence", values), cfg)
    assert found(series("kl_divergence", [0.05] * 10 + [10.0] * 4 + [0.05]), cfg) == []


# --- reward ----------------------------------------------------------------------------------


def test_reward_drop_and_spike_by_z_score():
    base = noisy(40, 0.7, 0.02)
    drop = found(series("reward_mean", [*base, 0.1]), only(reward=RewardConfig()))
    assert drop == [(T.REWARD_DROP, 41)]
    spike = found(series("reward_mean", [*base, 1.5]), only(reward=RewardConfig()))
    assert spike == [(T.REWARD_SPIKE, 41)]
    no_spike = only(reward=RewardConfig(detect_spike=False))
    assert found(series("reward_mean", [*base, 1.5]), no_spike) == []


def test_reward_noise_within_z_is_quiet_and_flat_reward_needs_the_std_floor():
    cfg = only(reward=RewardConfig())
    assert found(series("reward_mean", noisy(500, 0.5, 0.05, seed=7)), cfg) == []
    # Constant reward (std 0): a 0.1 move is under the 0.05 floor x 4.
    assert found(series("reward_mean", [0.5] * 30 + [0.6]), cfg) == []


def test_grpo_collapse_reward_std_zero_for_n_steps():
    cfg = only(reward=RewardConfig())
    points = [pt(i, reward_mean=0.5, reward_std=0.3) for i in range(1, 11)]
    points += [pt(i, reward_mean=1.0, reward_std=0.0) for i in range(11, 20)]
    anomalies = diagnose_points(points, cfg)
    assert [(a.anomaly_type, a.step) for a in anomalies] == [(T.REWARD_COLLAPSE, 15)]
    short = [pt(i, reward_std=0.0 if i < 5 else 0.2) for i in range(1, 10)]
    assert found(short, cfg) == []


def test_grpo_collapse_from_frac_reward_zero_std():
    cfg = only(reward=RewardConfig())
    points = [pt(i, custom={"frac_reward_zero_std": 0.9}) for i in range(1, 8)]
    assert found(points, cfg) == [(T.REWARD_COLLAPSE, 5)]
    ok = [pt(i, custom={"frac_reward_zero_std": 0.5}) for i in range(1, 20)]
    assert found(ok, cfg) == []


# --- gradients -------------------------------------------------------------------------------


def test_gradient_explosion_zclip_is_a_sustained_level():
    values = [*noisy(60, 1.0, 0.1), 50.0, 45.0, 60.0, *noisy(10, 1.0, 0.1, seed=5)]
    values += [40.0, 2.0, 45.0, 1.0, 50.0]
    anomalies = diagnose_points(series("grad_norm", values))
    # Raised where the third high step of the last five completes an episode: 61-63, then
    # 74, 76, 78 (high steps need not be consecutive).
    assert [(a.anomaly_type, a.step) for a in anomalies] == [
        (T.GRAD_EXPLOSION, 63),
        (T.GRAD_EXPLOSION, 78),
    ]
    first = anomalies[0]
    assert first.severity == "critical" and first.window["z"] > 2.5
    assert first.window["first_high_step"] == 61 and first.window["high_steps"] == 3
    assert "from step 61" in first.message


def test_a_single_healthy_gradient_spike_is_not_an_explosion():
    # A healthy run's spike: one hard batch, 8x the norm (the demo's SFT run had one at step
    # 49), and a second high step just after it, as recorded in the corpus's SFT runs.
    values = [*noisy(48, 2.5, 0.6, seed=11), 20.0, 12.0, *noisy(100, 2.5, 0.6, seed=12)]
    assert found(series("grad_norm", values)) == []
    # The same run diverging from step 80: the norm stays high.
    diverging = [*values[:79], 20.0, 25.0, 30.0, 40.0, 60.0, *values[84:]]
    assert found(series("grad_norm", diverging)) == [(T.GRAD_EXPLOSION, 82)]


def test_gradient_persistence_is_configurable():
    values = [*noisy(60, 1.0, 0.1), 50.0, *noisy(10, 1.0, 0.1, seed=5)]
    assert found(series("grad_norm", values)) == []
    every_spike = DetectorConfig(grad=GradConfig(persist_steps=1, persist_window=1))
    assert found(series("grad_norm", values), every_spike) == [(T.GRAD_EXPLOSION, 61)]
    with pytest.raises(ValueError, match="persist_window"):
        GradConfig(persist_steps=4, persist_window=3)


def test_gradient_warmup_and_small_ratio_do_not_explode():
    assert found(series("grad_norm", [1.0] * 10 + [100.0] * 3)) == []  # inside ZClip's warm-up
    # Very smooth norms: 1.5x is many std away, but not an explosion.
    assert found(series("grad_norm", [*noisy(60, 1.0, 0.001), 1.5, 1.5, 1.5])) == []
    lower = DetectorConfig(grad=GradConfig(min_ratio=1.2))
    assert found(series("grad_norm", [*noisy(60, 1.0, 0.001), 1.5, 1.5, 1.5]), lower) == [
        (T.GRAD_EXPLOSION, 63)
    ]


def test_vanishing_gradient_after_n_steps_below_eps():
    values = [1.0] * 5 + [1e-9] * 25
    assert found(series("grad_norm", values)) == [(T.GRAD_VANISHING, 25)]
    assert found(series("grad_norm", [1.0] * 5 + [1e-9] * 19 + [1.0])) == []


# --- plateau ---------------------------------------------------------------------------------


def plateau_raises(values, **cfg):
    config = only(plateau=PlateauConfig(eval_every=1, **cfg))
    return [a.step for a in diagnose_points(series("loss", values), config)]


def test_plateau_patience_then_cooldown():
    values = [1.0, 0.9, 0.8] + [0.8] * 12
    # Best at step 3; bad evaluations from step 4; the 11th bad one (> patience 10) at 14.
    assert plateau_raises(values) == [14]
    assert plateau_raises(values, patience=3) == [7, 11, 15]
    # cooldown 2: two evaluations after a raise are ignored.
    assert plateau_raises(values, patience=3, cooldown=2) == [7, 13]


def test_plateau_threshold_rel_and_abs_and_mode_max():
    slow = [1.0 - 1e-6 * i for i in range(20)]  # improves by 1e-6 a step
    # Below the 1e-4 rel threshold: no evaluation counts as better than step 1.
    assert plateau_raises(slow, patience=5) == [7, 13, 19]
    assert plateau_raises(slow, patience=5, threshold=1e-7) == []
    assert plateau_raises(slow, patience=5, threshold_mode="abs", threshold=1e-7) == []
    # abs 1e-5: step 12 is 1.1e-5 below step 1, a new best; the next raise is 6 bad steps later.
    assert plateau_raises(slow, patience=5, threshold_mode="abs", threshold=1e-5) == [7, 18]
    rising = [0.1 * i for i in range(1, 10)] + [0.9] * 4
    assert plateau_raises(rising, patience=2, mode="max") == [12]


def test_plateau_matches_torch_reduce_lr_on_plateau():
    torch = pytest.importorskip("torch")
    values = [1.0, 0.95, 0.96, 0.94, 0.94, 0.941, 0.93] + [
        0.93 + 0.001 * (i % 3) for i in range(30)
    ]
    values += [0.5, 0.6, 0.55] + [0.55] * 20
    for kwargs in (
        {"patience": 3},
        {"patience": 2, "cooldown": 3},
        {"patience": 4, "threshold": 0.01, "threshold_mode": "abs"},
    ):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, **kwargs)
        reductions = []
        for step, value in enumerate(values, start=1):
            before = opt.param_groups[0]["lr"]
            sched.step(value)
            if opt.param_groups[0]["lr"] < before:
                reductions.append(step)
        assert plateau_raises(values, **kwargs) == reductions, kwargs


def test_plateau_evaluates_block_means():
    cfg = only(plateau=PlateauConfig(eval_every=10, patience=2))
    # 10 blocks of the same mean: best at block 1, raise after 3 bad ones (block 4 = step 40).
    values = [1.0, 1.2] * 50
    assert [a.step for a in diagnose_points(series("loss", values), cfg)] == [40, 70, 100]


# --- entropy ---------------------------------------------------------------------------------


def test_entropy_collapse_in_rl():
    values = [1.0] * 20 + [1.0 - 0.05 * i for i in range(1, 19)]
    points = series("entropy", values, reward_mean=0.5)
    anomalies = diagnose_points(points, only(entropy=EntropyConfig()))
    assert [a.anomaly_type for a in anomalies] == [T.ENTROPY_COLLAPSE]
    assert anomalies[0].window["recent_ema"] < 0.3 * anomalies[0].window["early_ema"]


def test_entropy_falling_in_sft_is_learning_not_collapse():
    values = [1.0] * 20 + [1.0 - 0.05 * i for i in range(1, 19)]
    assert found(series("entropy", values), only(entropy=EntropyConfig())) == []
    everywhere = only(entropy=EntropyConfig(rl_only=False))
    assert [t for t, _ in found(series("entropy", values), everywhere)] == [T.ENTROPY_COLLAPSE]


# --- response length -------------------------------------------------------------------------


def test_length_explosion_and_collapse():
    cfg = only(length=LengthConfig())
    base = noisy(40, 200, 5)
    assert found(series("response_length_mean", [*base, 600]), cfg) == [(T.LENGTH_EXPLOSION, 41)]
    assert found(series("response_length_mean", [*base, 20]), cfg) == [(T.LENGTH_COLLAPSE, 41)]
    # Two tokens, then three: many std of a flat series, but one token and under 25%... no:
    # 2 -> 2.4 is 20%, under the relative floor.
    assert found(series("response_length_mean", [2.0] * 40 + [2.4]), cfg) == []


def test_length_clip_ratio_rising_but_not_high_from_the_start():
    cfg = only(length=LengthConfig())
    rising = [
        pt(i, custom={"completions/clipped_ratio": 0.05 if i <= 30 else 0.4}) for i in range(1, 40)
    ]
    # Judged on the mean of the last 5 ratios: above 20% at the third high step.
    assert found(rising, cfg) == [(T.LENGTH_EXPLOSION, 33)]
    one_step = [
        pt(i, custom={"completions/clipped_ratio": 0.31 if i == 32 else 0.02}) for i in range(1, 60)
    ]
    assert found(one_step, cfg) == []
    always = [pt(i, custom={"response_length/clip_ratio": 0.3}) for i in range(1, 60)]
    assert found(always, cfg) == []


# --- GPU memory and OOM ----------------------------------------------------------------------


def test_memory_near_capacity_from_config_or_point():
    cfg = only(memory=MemoryConfig(capacity_gb=80))
    points = series("gpu_memory_allocated_gb", [60, 70, 75, 76, 60])
    assert found(points, cfg) == [(T.GPU_MEMORY_PRESSURE, 3)]
    from_point = [
        pt(1, custom={"gpu_memory_reserved_gb": 39.0, "gpu_memory_total_gb": 40.0}),
    ]
    assert found(from_point, only(memory=MemoryConfig())) == [(T.GPU_MEMORY_PRESSURE, 1)]
    assert found(points, only(memory=MemoryConfig())) == []  # capacity unknown


def test_memory_trend_projected_past_capacity():
    cfg = only(memory=MemoryConfig(capacity_gb=80))
    climbing = series("gpu_memory_allocated_gb", [40.0 + i for i in range(25)])
    anomalies = diagnose_points(climbing, cfg)
    # At the 20th point: 59 GB, +1 GB/step, 21 steps from 80 GB (horizon 50).
    assert [(a.anomaly_type, a.step) for a in anomalies] == [(T.GPU_MEMORY_PRESSURE, 20)]
    assert anomalies[0].window["slope_gb_per_step"] == pytest.approx(1.0)
    slow = series("gpu_memory_allocated_gb", [40.0 + 0.1 * i for i in range(60)])
    assert found(slow, cfg) == []


def test_allocator_retry_counter_rising_warns():
    cfg = only(memory=MemoryConfig())
    points = [pt(i, custom={"num_alloc_retries": 0 if i < 5 else 3}) for i in range(1, 8)]
    assert found(points, cfg) == [(T.GPU_MEMORY_PRESSURE, 5)]


def test_oom_failure_is_raised_once_per_failed_attempt():
    state = JobState(DetectorConfig())
    state.observe(pt(10, loss=1.0))
    error = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    anomalies = state.observe_failure("oom", error, attempt_key="cmd-1")
    assert [(a.anomaly_type, a.step, a.severity) for a in anomalies] == [
        (T.GPU_OOM, 10, "critical")
    ]
    assert "Tried to allocate 2.00 GiB" in anomalies[0].message
    assert state.observe_failure("oom", error, attempt_key="cmd-1") == []
    assert state.observe_failure("error", "Traceback ...", attempt_key="cmd-2") == []
    assert len(state.observe_failure("oom", error, attempt_key="cmd-3", step=20)) == 1


# --- new best reward -------------------------------------------------------------------------


def test_new_best_reward_with_smoothing_and_spacing():
    rising = [0.02 * i for i in range(100)]
    anomalies = diagnose_points(
        series("reward_mean", rising), only(new_best_reward=NewBestRewardConfig())
    )
    # The first judgement after 10 points of warm-up, then at most one per 20 steps.
    assert [a.step for a in anomalies] == [10, 30, 50, 70, 90]
    assert all(a.severity == "info" and a.anomaly_type == T.NEW_BEST_REWARD for a in anomalies)
    flat = [0.5 + 0.001 * (i % 2) for i in range(100)]  # never better by min_delta
    assert found(series("reward_mean", flat)) == []
