"""A run for backtests: two gradient explosions 30 steps apart (the second within the policy's
cooldown), then a NaN loss."""

from __future__ import annotations

import math
import random

from posttrain.events.messages.metrics import MetricPoint

FIRST_EXPLOSION = 40
SECOND_EXPLOSION = 70
NAN_STEP = 100
# The gradient rule raises an explosion at the third high step of five.
RAISED_AFTER = 2
STEPS = 120


def explosions_then_nan(t0: float = 1.7e9) -> list[MetricPoint]:
    rng = random.Random(7)
    points = []
    for step in range(1, STEPS + 1):
        grad = rng.lognormvariate(0, 0.1)
        # Five steps each: an explosion that lasts, not a single noisy step.
        if FIRST_EXPLOSION <= step < FIRST_EXPLOSION + 5 or (
            SECOND_EXPLOSION <= step < SECOND_EXPLOSION + 5
        ):
            grad = 100.0
        loss = 2.0 / (1 + step / 50) * (1 + rng.gauss(0, 0.005))
        if step == NAN_STEP:
            loss = math.nan
        points.append(
            MetricPoint(
                step=step, timestamp=t0 + step, loss=loss, grad_norm=grad, learning_rate=1e-4
            )
        )
    return points
