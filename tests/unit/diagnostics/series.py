"""Synthetic metric series for the detector tests."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from posttrain.events.messages.metrics import MetricPoint

DATA = Path(__file__).parent / "data"


def pt(step: int, **fields: Any) -> MetricPoint:
    custom = fields.pop("custom", {})
    return MetricPoint(step=step, timestamp=float(step), custom=custom, **fields)


def series(field: str, values: list[float], start: int = 1, **extra: Any) -> list[MetricPoint]:
    return [pt(start + i, **{field: v}, **extra) for i, v in enumerate(values)]


def noisy(n: int, mean: float, sd: float, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(mean, sd) for _ in range(n)]


def recorded(name: str) -> list[MetricPoint]:
    """A healthy tiny run recorded by data/record_runs.py."""
    return [MetricPoint.model_validate(p) for p in json.loads((DATA / name).read_text())]


def healthy_long_run(steps: int = 2000, seed: int = 1) -> list[MetricPoint]:
    """An RL-like run: decaying loss with noise, log-normal grad norms, a slowly rising noisy
    reward with its std, a small KL, a slowly falling entropy, stable lengths and memory."""
    rng = random.Random(seed)
    points = []
    for step in range(1, steps + 1):
        progress = step / steps
        points.append(
            pt(
                step,
                loss=2.0 * (0.3 + 0.7 * (1 - progress) ** 2) * (1 + rng.gauss(0, 0.01)),
                grad_norm=1.5 * rng.lognormvariate(0, 0.25),
                learning_rate=1e-5,
                reward_mean=0.3 + 0.4 * progress + rng.gauss(0, 0.04),
                reward_std=0.3 + rng.gauss(0, 0.02),
                kl_divergence=0.02 + 0.03 * progress + abs(rng.gauss(0, 0.005)),
                entropy=1.2 - 0.4 * progress + rng.gauss(0, 0.03),
                response_length_mean=200 + 30 * progress + rng.gauss(0, 8),
                gpu_memory_allocated_gb=50 + rng.gauss(0, 0.5),
                custom={
                    "gpu_memory_total_gb": 80.0,
                    "completions/clipped_ratio": max(0.0, 0.03 + rng.gauss(0, 0.01)),
                    "frac_reward_zero_std": max(0.0, 0.1 + rng.gauss(0, 0.03)),
                },
            )
        )
    return points


def troubled_run() -> list:
    """An RL run that raises many kinds of anomaly (its loss spike at step 120 is not one of
    them: the loss of a job that samples rewards is not judged for spikes)."""
    points = []
    losses = noisy(300, 2.0, 0.02)
    grads = noisy(300, 1.0, 0.1, seed=3)
    for i in range(300):
        step = i + 1
        fields = {
            "loss": losses[i],
            "grad_norm": grads[i],
            "reward_mean": 0.2 + 0.002 * i,
            "reward_std": 0.3 if i < 250 else 0.0,
            "kl_divergence": 0.02 if i < 200 else 0.4,
            "entropy": 1.0 if i < 100 else max(0.1, 1.0 - 0.01 * (i - 100)),
        }
        if step == 120:
            fields["loss"] = 4.0
        if 150 <= step <= 152:  # an explosion lasts: one high step is not one
            fields["grad_norm"] = 30.0
        if step == 170:
            fields["loss"] = math.nan
        points.append(pt(step, **fields))
    return points
