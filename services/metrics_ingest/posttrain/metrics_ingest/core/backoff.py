"""How long to wait before the next attempt at PostgreSQL: exponential, capped, with jitter
(so that many ingest instances do not all knock at once when the server comes back)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    initial_s: float = 0.1
    max_s: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2  # a fraction of the delay, added or taken away

    def delay(self, attempt: int, random_unit: float) -> float:
        """The wait before retry number ``attempt`` (1 for the first retry); ``random_unit`` is
        a number in [0, 1) that the caller draws."""
        base = min(self.max_s, self.initial_s * self.multiplier ** max(0, attempt - 1))
        return max(0.0, base * (1.0 + self.jitter * (2.0 * random_unit - 1.0)))
