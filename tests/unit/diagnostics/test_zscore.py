"""ZScoreDepartures, the z-score shape shared by the reward and response-length rules."""

from __future__ import annotations

from posttrain.diagnostics.core.anomaly import AnomalyType
from posttrain.diagnostics.core.zscore import ZScoreDepartures


def _tracker(
    state: dict[str, object] | None = None,
    *,
    up: bool = True,
    min_rel_change: float | None = None,
) -> ZScoreDepartures:
    tracker = ZScoreDepartures(
        8,
        field="reward_mean",
        kinds=(AnomalyType.REWARD_SPIKE, AnomalyType.REWARD_DROP),
        min_points=4,
        min_abs_std=0.1,
        min_rel_std=0.0,
        z=3.0,
        up=up,
        min_rel_change=min_rel_change,
    )
    tracker.restore(state or {})
    return tracker


def _fill(tracker: ZScoreDepartures, values: list[float]) -> None:
    for value in values:
        assert tracker.push(value) is None


def test_a_departure_is_raised_once_and_rearms_when_the_series_returns() -> None:
    t = _tracker()
    _fill(t, [1.0, 1.0, 1.0, 1.0])
    first = t.push(5.0)
    assert first is not None and first.direction == 1
    # The spread is floored at min_abs_std: a flat window has a finite z.
    assert (first.mean, first.std, first.spread, first.points) == (1.0, 0.0, 0.1, 4)
    assert first.z == (5.0 - 1.0) / 0.1
    assert first.window() == {"mean": 1.0, "std": 0.0, "z": first.z, "spread": 0.1, "points": 4}
    assert t.push(50.0) is None  # still above: the same departure
    assert t.direction == 1
    _fill(t, [1.0] * 8)  # back inside; the spikes leave the window
    assert t.direction == 0
    again = t.push(5.0)
    assert again is not None and again.direction == 1 and again.mean == 1.0
    _fill(t, [1.0] * 8)
    below = t.push(-5.0)
    assert below is not None and below.direction == -1


def test_directions_can_be_turned_off() -> None:
    t = _tracker(up=False)
    _fill(t, [1.0, 1.0, 1.0, 1.0])
    assert t.push(5.0) is None and t.direction == 0
    drop = t.push(-5.0)
    assert drop is not None and drop.direction == -1


def test_min_rel_change_asks_for_a_relative_distance_too() -> None:
    t = _tracker(min_rel_change=0.5)
    _fill(t, [10.0, 10.0, 10.0, 10.0])
    assert t.push(12.0) is None  # z 20, but only 20% from the mean
    far = t.push(16.0)
    assert far is not None and far.direction == 1


def test_state_round_trips_through_the_rules_keys() -> None:
    t = _tracker()
    _fill(t, [1.0, 1.0, 1.0, 1.0])
    assert t.push(5.0) is not None
    saved = t.to_dict()
    assert saved == {"window": t.window.to_dict(), "direction": t.direction}
    restored = _tracker(saved)
    assert restored.direction == 1 and list(restored.window.values) == list(t.window.values)
    assert restored.push(6.0) is None  # the departure it was in is not raised again
