"""Map the names trainers log onto ``MetricPoint``'s canonical fields (METRICS.md, SEED.md s.2).

One table serves every path in: the direct callback (the seed's names such as
``grad_norm_actor``), the Hugging Face/TRL callback (``reward``, ``kl``, ``completions/...``) and
verl's ``file`` logger (``actor/pg_loss``, ``critic/score/mean``). A name that feeds no canonical
field is kept under ``custom``: nothing a trainer logs is dropped. The metric file's reader
(``metricfile``) maps its lines' names through the same table.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

from posttrain.events.messages import CORE_FIELDS, MetricPoint
from posttrain.events.nonfinite import NON_FINITE

# canonical field -> the names that feed it, in priority order: the first one present wins and
# the others stay under ``custom`` (so verl's post-KL reward is kept next to the raw score).
ALIASES: dict[str, tuple[str, ...]] = {
    "loss": ("loss", "train/loss", "actor/pg_loss"),
    "policy_loss": ("policy_loss", "loss/policy_avg", "actor/pg_loss"),
    "value_loss": ("value_loss", "loss/value_avg", "critic/vf_loss"),
    "learning_rate": ("learning_rate", "lr", "actor/lr", "train/lr", "critic/lr"),
    "grad_norm": ("grad_norm", "grad_norm_actor", "actor/grad_norm", "critic/grad_norm"),
    "reward_mean": (
        "reward_mean",
        "reward",
        "objective/scores",
        "critic/score/mean",
        "critic/rewards/mean",
        # DPO has no sampled reward; the implicit reward margin is what rises as it learns.
        "rewards/margins",
    ),
    "reward_std": ("reward_std",),
    "kl_divergence": (
        "kl_divergence",
        "kl",
        "objective/kl",
        "actor/ppo_kl",
        "actor/kl_loss",
        "actor/reward_kl_penalty",
    ),
    "entropy": ("entropy", "objective/entropy", "policy/entropy_avg", "actor/entropy"),
    "response_length_mean": (
        "response_length_mean",
        "completions/mean_length",
        "response_length/mean",
    ),
    "clip_frac": (
        "clip_frac",
        "clip_ratio/region_mean",
        "policy/clipfrac_avg",
        "actor/pg_clipfrac",
    ),
    "throughput_samples_per_sec": ("throughput_samples_per_sec",),
    "tokens_per_second": ("tokens_per_second", "perf/throughput"),
    "gpu_memory_allocated_gb": (
        "gpu_memory_allocated_gb",
        "gpu_memory_allocated_gib",
        "perf/max_memory_allocated_gb",
    ),
    "gpu_utilization_percent": ("gpu_utilization_percent",),
    "eval_loss": ("eval_loss", "eval/loss", "val/loss"),
    "eval_accuracy": ("eval_accuracy", "eval/accuracy"),
}

assert set(ALIASES) == set(CORE_FIELDS), "every canonical field needs an alias entry"

# Names that are not metrics but the point's coordinates.
COORDINATES = frozenset({"step", "epoch", "timestamp"})
# The names that carry a point's epoch, in priority order: verl's PPO trainer logs it as
# ``training/epoch`` (next to ``training/global_step``, which is the line's ``step``).
EPOCH_NAMES: tuple[str, ...] = ("epoch", "training/epoch")


def as_number(value: Any) -> float | None:
    """A float for a numeric value (tensor and numpy scalars too, through ``item()``), else None.

    NaN and infinities are returned as they are: hiding a NaN loss would hide the anomaly."""
    kind = type(value)
    if kind is float:  # the common case first: this runs for every value of every step
        return value  # type: ignore[no-any-return]
    if kind is bool:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return NON_FINITE.get(value)
    item = getattr(value, "item", None)
    if callable(item):
        try:
            unwrapped = item()
        except (TypeError, ValueError, RuntimeError):
            return None
        if isinstance(unwrapped, int | float) and not isinstance(unwrapped, bool):
            return float(unwrapped)
    return None


def jsonable(value: Any) -> Any:
    """A JSON-friendly form of a custom value: numbers unwrapped, containers kept, the rest text."""
    if value is None or type(value) in (float, int, str, bool):
        return value
    number = as_number(value)
    if number is not None:
        return number
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)


# name -> ((canonical field, priority), ...): one dictionary lookup per logged name.
_FEEDS: dict[str, tuple[tuple[str, int], ...]] = {}
for _field, _names in ALIASES.items():
    for _priority, _name in enumerate(_names):
        _FEEDS[_name] = (*_FEEDS.get(_name, ()), (_field, _priority))


class NamePlan(NamedTuple):
    """Which logged name feeds which canonical field, and which names are kept under custom."""

    canonical: tuple[tuple[str, str], ...]  # (field, name) of each winning alias
    custom: tuple[str, ...]  # names kept under custom


@functools.lru_cache(maxsize=1024)
def _plan(names: tuple[str, ...], skip: frozenset[str]) -> NamePlan:
    """Which name feeds which field, for a set of names whose values are all numbers.

    A training loop logs the same names at every step: resolved once, reused each step."""
    best: dict[str, tuple[int, str]] = {}
    for name in names:
        for field, priority in _FEEDS.get(name, ()):
            current = best.get(field)
            if current is None or priority < current[0]:
                best[field] = (priority, name)
    used = {name for _, name in best.values()}
    return NamePlan(
        tuple((field, name) for field, (_, name) in best.items()),
        tuple(n for n in names if n not in used and n not in skip and n != "custom"),
    )


def name_plan(names: tuple[str, ...]) -> NamePlan:
    """How ``canonical_fields`` maps a step that logs ``names``, every value a number (the
    coordinates and a nested ``custom`` are in neither part). Cached per tuple of names."""
    return _plan(names, COORDINATES)


def canonical_fields(
    fields: Mapping[str, Any], skip: frozenset[str] = COORDINATES
) -> tuple[dict[str, float], dict[str, Any]]:
    """Split logged names into (canonical values, custom values).

    A name is consumed only when its value became a canonical field; a losing alias or a
    non-numeric value under a canonical name is kept under ``custom``."""
    plan = _plan(tuple(fields), skip)
    canonical: dict[str, float] = {}
    for field, name in plan.canonical:
        number = as_number(fields[name])
        if number is None:  # a name that is usually a number is not, this time
            return _canonical_fields_slow(fields, skip)
        canonical[field] = number
    custom = _nested_custom(fields.get("custom"))
    for name in plan.custom:
        custom[name] = jsonable(fields[name])
    return canonical, custom


def _nested_custom(nested: Any) -> dict[str, Any]:
    """The values logged under ``custom`` itself (a value that is no mapping is kept too)."""
    if nested is None:
        return {}
    if isinstance(nested, Mapping):
        return {str(k): jsonable(v) for k, v in nested.items()}
    return {"custom": jsonable(nested)}


def _canonical_fields_slow(
    fields: Mapping[str, Any], skip: frozenset[str]
) -> tuple[dict[str, float], dict[str, Any]]:
    best: dict[str, tuple[int, str, float]] = {}
    for name, value in fields.items():
        feeds = _FEEDS.get(name)
        if feeds is None:
            continue
        number = as_number(value)
        if number is None:
            continue
        for field, priority in feeds:
            current = best.get(field)
            if current is None or priority < current[0]:
                best[field] = (priority, name, number)
    canonical = {field: number for field, (_, _, number) in best.items()}
    used = {name for _, name, _ in best.values()}
    custom = _nested_custom(fields.get("custom"))
    for name, value in fields.items():
        if name in used or name in skip or name == "custom":
            continue
        custom[name] = jsonable(value)
    return canonical, custom


def to_point(
    step: int,
    epoch: float | None,
    timestamp: float,
    fields: Mapping[str, Any],
    skip: frozenset[str] = COORDINATES,
) -> MetricPoint:
    """One ``MetricPoint`` from a step's logged names."""
    canonical, custom = canonical_fields(fields, skip)
    return MetricPoint(step=step, epoch=epoch, timestamp=timestamp, custom=custom, **canonical)
