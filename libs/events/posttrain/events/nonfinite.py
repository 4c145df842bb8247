"""Non-finite floats in JSON, once for the whole platform.

JSON has no NaN or infinity. posttrain writes them as the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"`` (pydantic's ``ser_json_inf_nan="strings"``, which ``MetricPoint`` uses), never as
``null``: a NaN loss must stay a NaN loss, not become a missing one. Every reader and writer of
those strings (the metrics views, the fast writer, the metric-file reader, the ingest's jsonb,
the diagnostics' rules) goes through this module.
"""

from __future__ import annotations

import math
from typing import Any, Literal

NonFiniteText = Literal["NaN", "Infinity", "-Infinity"]

# The strings, and the float each stands for.
NON_FINITE: dict[str, float] = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def non_finite_text(value: float) -> NonFiniteText:
    """How a non-finite float is written (its caller has checked that it is not finite)."""
    if value != value:
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def float_of(value: Any) -> float | None:
    """A JSON value read as a float: a number (not a bool), or one of the strings above;
    None for anything else."""
    kind = type(value)
    if kind is float:  # the common case first: rules call this for every value of every step
        return value  # type: ignore[no-any-return]
    if kind is int:
        return float(value)
    if kind is str:
        return NON_FINITE.get(value)
    if kind is bool or not isinstance(value, int | float):
        return None
    return float(value)


def as_text(value: Any) -> Any:
    """A JSON value with every non-finite float in it (at any depth) written as its string:
    what orjson, which writes them as null, must be given."""
    if isinstance(value, float):
        return value if value - value == 0.0 else non_finite_text(value)
    if isinstance(value, dict):
        return {k: as_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_text(v) for v in value]
    return value


def has_non_finite(value: Any) -> bool:
    """Whether a JSON value holds a non-finite float, at any depth."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(has_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_non_finite(v) for v in value)
    return False
