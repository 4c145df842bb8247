"""The Prometheus text exposition format (0.0.4), built one metric family at a time.

    text = Exposition("posttrain_agent", labels={"agent": "gpu-1"})
    text.add("launches_total", "counter", "Stage processes started.", 3)
    text.add("stages", "gauge", "Stages by state.", [({"state": "running"}, 1)])
    body = text.render()

Label values are escaped, labels are written in name order and a service's constant labels
(``labels=``) go on every sample, so that every service writes the same text the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Kind = Literal["counter", "gauge", "histogram", "untyped"]
Labels = Mapping[str, str]
Samples = float | Iterable[tuple[Labels, float]]
"""One unlabelled value, or a value per label set."""


class Exposition:
    def __init__(self, prefix: str, labels: Labels | None = None) -> None:
        self.prefix = prefix
        self.labels = dict(labels or {})
        self._lines: list[str] = []

    def add(self, name: str, kind: Kind, help_: str, samples: Samples) -> None:
        """One family: its HELP and TYPE lines and its samples (none is fine: the family is
        still declared, e.g. a counter by type before the first one is counted)."""
        full = self._family(name, kind, help_)
        if isinstance(samples, int | float):
            samples = [({}, samples)]
        self._lines.extend(self._sample(full, value, labels) for labels, value in samples)

    def histogram(
        self, name: str, help_: str, bounds: Sequence[float], counts: Sequence[int], sum_: float
    ) -> None:
        """A histogram from per-bucket counts (not cumulative): ``counts[i]`` observations fell
        at or under ``bounds[i]`` and above the bound before; ``counts[-1]``, one more than the
        bounds, is above them all."""
        if len(counts) != len(bounds) + 1:
            raise ValueError(
                f"{len(bounds)} bounds need {len(bounds) + 1} counts, not {len(counts)}"
            )
        full = self._family(name, "histogram", help_)
        cumulative = 0
        for bound, count in zip(bounds, counts, strict=False):
            cumulative += count
            self._lines.append(self._sample(f"{full}_bucket", cumulative, {"le": number(bound)}))
        total = cumulative + counts[-1]
        self._lines.append(self._sample(f"{full}_bucket", total, {"le": "+Inf"}))
        self._lines.append(self._sample(f"{full}_sum", sum_, {}))
        self._lines.append(self._sample(f"{full}_count", total, {}))

    def render(self) -> str:
        return "\n".join(self._lines) + "\n"

    def _family(self, name: str, kind: Kind, help_: str) -> str:
        full = f"{self.prefix}_{name}" if self.prefix else name
        help_text = help_.replace("\\", "\\\\").replace("\n", "\\n")
        self._lines.append(f"# HELP {full} {help_text}")
        self._lines.append(f"# TYPE {full} {kind}")
        return full

    def _sample(self, name: str, value: float, labels: Labels) -> str:
        merged = {**self.labels, **labels} if self.labels else labels
        if not merged:
            return f"{name} {number(value)}"
        inner = ",".join(f'{k}="{escape(v)}"' for k, v in sorted(merged.items()))
        return f"{name}{{{inner}}} {number(value)}"


def escape(value: str) -> str:
    """A label value as the format wants it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def number(value: float) -> str:
    """A sample value: integers as integers, ``NaN``, ``+Inf``/``-Inf``, floats as ``repr``."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)
