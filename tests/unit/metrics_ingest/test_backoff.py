from __future__ import annotations

import pytest

from posttrain.metrics_ingest.core.backoff import Backoff


def test_delays_grow_exponentially_up_to_the_cap() -> None:
    backoff = Backoff(initial_s=0.1, max_s=2.0, multiplier=2.0, jitter=0.0)
    assert [backoff.delay(n, 0.5) for n in range(1, 7)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    )


def test_jitter_stays_within_its_fraction() -> None:
    backoff = Backoff(initial_s=1.0, max_s=1.0, jitter=0.2)
    assert backoff.delay(1, 0.0) == pytest.approx(0.8)
    assert backoff.delay(1, 0.999999) == pytest.approx(1.2, abs=1e-5)
