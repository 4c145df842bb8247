"""A series judged by its z against a rolling window, raised once per departure: the shape that
the reward spike/drop and the response length explosion/collapse rules share.

z is taken against the window's mean with its spread floored, so that a flat series has a finite
z: ``max(std, min_abs_std, min_rel_std * abs(mean))``, compared as ``max`` compares. A value
whose z is past ``z`` (above, or below its negative) has *departed*; a departure is reported at
its first step and again only when the direction changes or after the series came back. Every
value joins the window after it is judged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from posttrain.diagnostics.core.anomaly import Anomaly, AnomalyType, make
from posttrain.diagnostics.core.saved_state import SavedState, count, window
from posttrain.diagnostics.core.windows import RollingWindow
from posttrain.events.messages.metrics import MetricPoint


@dataclass(frozen=True, slots=True)
class Departure:
    """A value that left the window: ``direction`` +1 above it, -1 below it."""

    direction: int
    mean: float
    std: float
    spread: float
    z: float
    points: int

    def window(self) -> dict[str, float]:
        """The statistics an anomaly carries."""
        return {
            "mean": self.mean,
            "std": self.std,
            "z": self.z,
            "spread": self.spread,
            "points": self.points,
        }


class ZScoreDepartures(SavedState):
    """The window and the current direction (+1, -1, 0) of one series, saved by its rule (a
    ``part`` of the rule's state).

    ``up`` and ``down`` turn each direction on; ``min_rel_change``, when set, also asks that the
    value be farther than ``min_rel_change * abs(mean)`` from the mean. ``field`` and ``kinds``
    (the anomaly types of a departure up and down) are what ``observe`` raises.
    """

    saved = (window("window", "size"), count("direction"))

    __slots__ = (
        "_down",
        "_field",
        "_kinds",
        "_min_abs_std",
        "_min_points",
        "_min_rel_change",
        "_min_rel_std",
        "_up",
        "_z",
        "direction",
        "size",
        "window",
    )

    def __init__(
        self,
        size: int,
        *,
        field: str,
        kinds: tuple[AnomalyType, AnomalyType],
        min_points: int,
        min_abs_std: float,
        min_rel_std: float,
        z: float,
        up: bool = True,
        down: bool = True,
        min_rel_change: float | None = None,
    ) -> None:
        self.size = size
        self.window = RollingWindow(size)
        self.direction = 0
        self._field = field
        self._kinds = kinds
        # Read at every point, so plain attributes (a config's are slower).
        self._min_points = min_points
        self._min_abs_std = min_abs_std
        self._min_rel_std = min_rel_std
        self._z = z
        self._up = up
        self._down = down
        self._min_rel_change = min_rel_change

    def push(self, value: float) -> Departure | None:
        """Judge ``value`` against the window, then add it; the departure it starts, if any."""
        w = self.window
        direction = 0
        departure = None
        if len(w.values) >= self._min_points:
            mean, std = w.mean_std()
            spread = std
            if self._min_abs_std > spread:
                spread = self._min_abs_std
            abs_mean = abs(mean)
            rel = self._min_rel_std * abs_mean
            if rel > spread:
                spread = rel
            z = 0.0 if spread == 0.0 else (value - mean) / spread
            min_rel_change = self._min_rel_change
            up, down = self._up, self._down
            if min_rel_change is not None and not abs(value - mean) > min_rel_change * abs_mean:
                up = down = False
            limit = self._z
            if z > limit and up:
                direction = 1
            elif z < -limit and down:
                direction = -1
            if direction and direction != self.direction:
                departure = Departure(direction, mean, std, spread, z, len(w))
        self.direction = direction
        w.push(value)
        return departure

    def observe(
        self,
        point: MetricPoint,
        value: float,
        out: list[Anomaly],
        describe: Callable[[MetricPoint, float, Departure], str],
    ) -> None:
        """Push ``value``; a departure it starts is appended to ``out`` as an anomaly of the
        kind for its direction, with the message ``describe`` writes."""
        departure = self.push(value)
        if departure is None:
            return
        up, down = self._kinds
        out.append(
            make(
                up if departure.direction > 0 else down,
                "warning",
                point.step,
                value,
                self._field,
                describe(point, value, departure),
                departure.window(),
            )
        )
