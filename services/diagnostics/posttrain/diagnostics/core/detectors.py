"""The rules. Each rule folds one job's points, in order, into a small state and appends the
anomalies that a point raises; each declares the state it saves (``saved``: one codec for
every rule, in ``saved_state``).

A rule raises once per episode: a condition that holds for many steps in a row (a NaN loss that
stays NaN, a KL that stays high) is one anomaly, raised at the step where it is established
(where it began for a one-step condition; for one that must persist, the step that completes
it, its message giving where it began); the rule re-arms when the condition clears. Every value
a rule reads may be missing (trainers report different fields) or non-finite (the NaN rule
names those; an infinite KL is also a KL blow-up; the others skip them).
"""

from __future__ import annotations

import bisect
import math
import operator
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from posttrain.diagnostics.core.anomaly import Anomaly, AnomalyType, fmt, make
from posttrain.diagnostics.core.config import (
    DetectorConfig,
    EntropyConfig,
    GradConfig,
    KlConfig,
    LengthConfig,
    LossSpikeConfig,
    MemoryConfig,
    NewBestRewardConfig,
    NonFiniteConfig,
    PlateauConfig,
    RewardConfig,
)
from posttrain.diagnostics.core.saved_state import (
    SavedState,
    count,
    ema,
    flag,
    floats,
    median,
    names,
    number,
    numbers_by_name,
    optional_count,
    optional_number,
    part,
    steps,
    window,
)
from posttrain.diagnostics.core.windows import (
    EmaStats,
    JsonDict,
    RollingMedian,
    RollingWindow,
    linear_slope,
)
from posttrain.diagnostics.core.zscore import Departure, ZScoreDepartures
from posttrain.events.messages.metrics import MetricPoint
from posttrain.events.nonfinite import float_of

_POINT_FIELDS = frozenset(MetricPoint.model_fields)
_isfinite = math.isfinite
Getter = Callable[[MetricPoint], Any]


# A rule's value: a number, or a non-finite float as the wire writes it in ``custom``.
_as_float = float_of


def getter(name: str) -> Getter:
    """A fast accessor of a canonical field, else of a key of ``custom``."""
    if name in _POINT_FIELDS:
        return operator.attrgetter(name)

    def custom(point: MetricPoint) -> Any:
        return point.custom.get(name) if point.custom else None

    return custom


def read(point: MetricPoint, name: str) -> float | None:
    """A numeric field of the point (a canonical field, else a key of ``custom``)."""
    value = getattr(point, name) if name in _POINT_FIELDS else point.custom.get(name)
    return _as_float(value)


def finite(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, not a number, NaN or infinite)."""
    if value is None:
        return None
    if value.__class__ is float:
        return value if _isfinite(value) else None
    number = _as_float(value)
    return number if number is not None and _isfinite(number) else None


def finite_getter(name: str) -> Callable[[MetricPoint], float | None]:
    """A reader of the field ``name`` (canonical, else a key of ``custom``) as a finite float,
    or None (missing, not a number, NaN or infinite)."""
    get = getter(name)

    def read_finite(point: MetricPoint) -> float | None:
        value = get(point)
        if value.__class__ is float:  # the common case, as ``finite`` decides it
            return value if _isfinite(value) else None
        return None if value is None else finite(value)

    return read_finite


def first_finite_getter(names: tuple[str, ...]) -> Callable[[MetricPoint], float | None]:
    """The first finite value of ``names`` (``_finite`` of each in turn), as one call."""
    if any(name in _POINT_FIELDS for name in names):
        readers = tuple(finite_getter(name) for name in names)

        def first_finite(point: MetricPoint) -> float | None:
            for read_finite in readers:
                value = read_finite(point)
                if value is not None:
                    return value
            return None

        return first_finite

    def first_finite_custom(point: MetricPoint) -> float | None:
        custom = point.custom
        if custom:
            for name in names:
                value = custom.get(name)
                if value is not None:
                    value = finite(value)
                    if value is not None:
                        return value
        return None

    return first_finite_custom


def read_first(point: MetricPoint, names: tuple[str, ...]) -> float | None:
    custom = point.custom
    for name in names:
        if name in _POINT_FIELDS:
            value = _as_float(getattr(point, name))
        elif custom:
            value = _as_float(custom.get(name))
        else:
            continue
        if value is not None:
            return value
    return None


class Rule(Protocol):
    """A rule of the fold. ``value_field`` names its main field: ``Rules.observe`` reads it once
    per point and passes its finite value (None when missing, not a number, NaN or infinite) to
    ``observe``; a rule whose ``value_field`` is None is passed None and reads the point itself.
    """

    name: str
    value_field: str | None

    def observe(self, point: MetricPoint, value: float | None, out: list[Anomaly]) -> None: ...

    def on_rewind(self) -> None:
        """The job's steps went backwards (a rollback or a resume from a checkpoint)."""

    def to_dict(self) -> JsonDict: ...


class NonFiniteRule(SavedState):
    """Every watched field that turns NaN or infinite is named in an anomaly.

    A run of bad steps (consecutive points with at least one non-finite field) names each field
    once: the step where a field first goes bad raises an anomaly listing the fields new to the
    run, with every field bad at that step, so a loss that stays NaN for 50 steps is one
    anomaly, and a KL that turns infinite a step after the gradient norm went NaN is a second
    one that names it. The run ends at a point with no non-finite field that carries a field
    named in it, finite again; a point about other fields (an evaluation's) leaves it as it is.
    """

    name = "non_finite"
    value_field: str | None = None  # reads every watched field itself
    saved = (names("named"),)

    def __init__(self, cfg: NonFiniteConfig, state: JsonDict) -> None:
        self.cfg = cfg
        self.core = tuple(f for f in cfg.fields if f in _POINT_FIELDS)
        self.custom = tuple(f for f in cfg.fields if f not in _POINT_FIELDS)
        # One call returns every core value (a tuple even for a single field).
        self._values = operator.attrgetter(*self.core, "step") if self.core else None
        self.named: list[str] = []
        self.restore(state)

    @classmethod
    def upcast(cls, state: JsonDict) -> JsonDict:
        if state.get("named") is not None:
            return state
        # A state saved before fields were named one by one: only "a run is on".
        return {"named": ["*"] if state.get("active") else []}

    def observe(self, point: MetricPoint, value: float | None, out: list[Anomaly]) -> None:
        named = self.named
        values_of = self._values
        if not named and values_of is not None and not (self.custom and point.custom):
            # The common case: no run of bad steps and every watched value finite or missing
            # (the step, last, is an int) changes nothing.
            for value in values_of(point):
                if value is not None and not _isfinite(value):
                    break
            else:
                return
        bad: list[tuple[str, float]] = []
        recovered = False  # a field named in this run is finite again
        if self._values is not None:
            values = self._values(point)
            for i, value in enumerate(values[:-1]):
                if value is not None:
                    if not _isfinite(value):
                        bad.append((self.core[i], value))
                    elif named and self.core[i] in named:
                        recovered = True
        if self.custom and point.custom:
            for name in self.custom:
                number = read(point, name)
                if number is not None:
                    if not _isfinite(number):
                        bad.append((name, number))
                    elif named and name in named:
                        recovered = True
        if not bad:
            if recovered or "*" in named:
                self.named = []
            return
        if "*" in named:
            # Restored from a state that only knew "a run is on": its fields were reported.
            self.named = [name for name, _ in bad]
            return
        new = [(name, value) for name, value in bad if name not in named]
        if not new:
            return
        self.named = [*named, *(name for name, _ in new)]
        listed = ", ".join(f"{name}={value}" for name, value in bad)
        message = f"non-finite values at step {point.step}: {listed}"
        if named:
            message += (
                f" (newly non-finite: {', '.join(name for name, _ in new)}; named earlier in "
                f"this run of bad steps: {', '.join(named)})"
            )
        out.append(
            make(
                AnomalyType.NON_FINITE,
                "critical",
                point.step,
                new[0][1],
                new[0][0],
                message,
                {f"non_finite_{name}": 1.0 for name, _ in bad},
            )
        )

    def on_rewind(self) -> None:
        self.named = []


class LossSpikeRule(SavedState):
    name = "loss_spike"
    saved = (window("window", "cfg.window"), flag("active"), count("episode"), flag("sampled_rl"))
    window: RollingWindow
    active: bool
    episode: int
    sampled_rl: bool

    def __init__(self, cfg: LossSpikeConfig, state: JsonDict) -> None:
        self.cfg = cfg
        self.value_field: str | None = cfg.field
        self._sampled_rl_getters = tuple(getter(k) for k in cfg.sampled_rl_keys)
        # The thresholds read at every point, as plain attributes (a config's are slower).
        self._skip_sampled_rl = cfg.skip_sampled_rl
        self._min_points = cfg.min_points
        self._min_rel_std = cfg.min_rel_std
        self._min_abs_std = cfg.min_abs_std
        self._k = cfg.k
        self.restore(state)

    def observe(self, point: MetricPoint, value: float | None, out: list[Anomaly]) -> None:
        if self._skip_sampled_rl:
            if not self.sampled_rl:
                for get in self._sampled_rl_getters:
                    raw = get(point)
                    if raw is not None and _as_float(raw) is not None:
                        self.sampled_rl = True
                        return
            else:
                return
        if value is None:
            return
        w = self.window
        spiking = False
        min_points = self._min_points
        if len(w.values) >= min_points:
            mean, std = w.mean_std()
            # max(std, min_rel_std * abs(mean), min_abs_std), compared as max compares.
            spread = std
            rel = self._min_rel_std * abs(mean)
            if rel > spread:
                spread = rel
            if self._min_abs_std > spread:
                spread = self._min_abs_std
            limit = mean + self._k * spread
            spiking = value > limit
            if spiking and not self.active:
                cfg = self.cfg
                out.append(
                    make(
                        AnomalyType.LOSS_SPIKE,
                        "warning",
                        point.step,
                        value,
                        cfg.field,
                        f"{cfg.field} {fmt(value)} at step {point.step} is above mean "
                        f"{fmt(mean)} + {fmt(cfg.k)} x std {fmt(spread)} = {fmt(limit)} over "
                        f"the last {len(w)} points",
                        {"mean": mean, "std": std, "threshold": limit, "points": len(w)},
                    )
                )
        if spiking:
            self.active = True
            self.episode += 1
        else:
            self.active = False
            self.episode = 0
        # A spike stays out of the baseline, unless it lasts: then it is the new level.
        if not spiking or self.episode > min_points:
            w.push(value)

    def on_rewind(self) -> None:
        self.active = False
        self.episode = 0


class KlRule(SavedState):
    name = "kl"
    saved = (
        median("median", "cfg.median_window"),
        floats("recent", "cfg.smoothing"),
        flag("active"),
        count("saturated_run"),
        # Finite points still to come before an infinite KL's episode can end: until the level
        # is made of points after it, a high level is the same blow-up.
        count("hold"),
    )
    median: RollingMedian
    recent: deque[float]
    active: bool
    saturated_run: int
    hold: int

    def __init__(self, cfg: KlConfig, state: JsonDict) -> None:
        self.cfg = cfg
        self.value_field: str | None = cfg.field
        self.get = getter(cfg.field)
        self.restore(state)
        self._limit = None if cfg.target is None else cfg.abs_factor * cfg.target
        self._saturated_at = (
            None if cfg.saturation_value is None else cfg.saturation_value * (1.0 - 1e-6)
        )
        self._median_min_points = cfg.median_min_points
        self._median_floor = cfg.median_floor
        self._median_factor = cfg.median_factor

    def observe(self, point: MetricPoint, value: float | None, out: list[Anomaly]) -> None:
        if value is None:
            raw = self.get(point)  # missing, or non-finite: an infinite KL is a blow-up
            if raw is not None:
                self._infinite(point, _as_float(raw), out)
            return
        recent = self.recent
        recent.append(value)
        # The median of the last few: one heavy-tailed step does not move it, a level that has
        # risen and stayed does.
        ordered = sorted(recent)
        n = len(ordered)
        level = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2.0
        limit = self._limit
        above_target = limit is not None and level > limit
        m = self.median
        median: float | None = None
        above_median = False
        if len(m.values) >= self._median_min_points:
            median = m.median
            # level > median_factor * max(median, 1e-12)
            above_median = level > self._median_floor and level > self._median_factor * (
                1e-12 if median < 1e-12 else median
            )
        blown = above_target or above_median
        if blown and not self.active:
            out.append(self._blowup(point, value, level, above_target, median, above_median))
        hold = self.hold
        self.active = blown or hold > 0
        self.hold = hold - 1 if hold > 0 else 0  # max(hold - 1, 0)
        m.push(value)
        saturated_at = self._saturated_at
        if saturated_at is not None:
            if abs(value) >= saturated_at:
                self.saturated_run += 1
                cfg = self.cfg
                if self.saturated_run == cfg.saturation_steps and cfg.saturation_value is not None:
                    out.append(
                        make(
                            AnomalyType.KL_SATURATED,
                            "warning",
                            point.step,
                            value,
                            cfg.field,
                            f"{cfg.field} has sat at its clamp {fmt(cfg.saturation_value)} for "
                            f"{self.saturated_run} steps (step {point.step})",
                            {"clamp": cfg.saturation_value, "steps": float(self.saturated_run)},
                        )
                    )
            else:
                self.saturated_run = 0

    def _blowup(
        self,
        point: MetricPoint,
        value: float,
        level: float,
        above_target: bool,
        median: float | None,
        above_median: bool,
    ) -> Anomaly:
        """The anomaly of a level above the target or the rolling median (``median``: None
        while the median has too few points)."""
        cfg = self.cfg
        reasons: list[str] = []
        window: dict[str, float] = {"recent_median": level}
        if cfg.target is not None:
            limit = cfg.abs_factor * cfg.target
            window["abs_threshold"] = limit
            if above_target:
                reasons.append(
                    f"above {fmt(cfg.abs_factor)} x target {fmt(cfg.target)} = {fmt(limit)}"
                )
        if median is not None:
            window["median"] = median
            window["points"] = float(len(self.median))
            if above_median:
                reasons.append(
                    f"{fmt(level / median) if median > 0 else 'far'} x its rolling median "
                    f"{fmt(median)} (limit {fmt(cfg.median_factor)} x)"
                )
        return make(
            AnomalyType.KL_BLOWUP,
            "critical" if len(reasons) > 1 else "warning",
            point.step,
            value,
            cfg.field,
            f"{cfg.field} at step {point.step} (median of the last {len(self.recent)}: "
            f"{fmt(level)}, now {fmt(value)}) is " + " and ".join(reasons),
            window,
        )

    def _infinite(self, point: MetricPoint, value: float | None, out: list[Anomaly]) -> None:
        """An infinite KL is a blow-up whatever the history: the policy gives probability 0
        where the reference does not (or the estimate overflowed). It stays out of the windows,
        as every non-finite value does; NaN says nothing about the KL's size (the NaN rule
        names it)."""
        if value is None or not math.isinf(value):
            return
        if not self.active:
            cfg = self.cfg
            out.append(
                make(
                    AnomalyType.KL_BLOWUP,
                    "critical",
                    point.step,
                    value,
                    cfg.field,
                    f"{cfg.field} is {value} at step {point.step}: the policy has left its "
                    "reference (an infinite KL)",
                    {"infinite": 1.0},
                )
            )
        self.active = True
        self.hold = self.cfg.smoothing

    def on_rewind(self) -> None:
        self.active = False
        self.saturated_run = 0
        self.hold = 0
        self.recent.clear()


class RewardRule(SavedState):
    name = "reward"
    saved = (part("level"), count("collapse_run"))
    collapse_run: int

    def __init__(self, cfg: RewardConfig, state: JsonDict) -> None:
        self.cfg = cfg
        self.value_field: str | None = cfg.field
        self._std = finite_getter(cfg.std_field)
        self._zero_std_frac = first_finite_getter(cfg.zero_std_frac_keys)
        self._collapse_std_eps = cfg.collapse_std_eps
        self._zero_std_frac_max = cfg.zero_std_frac_max
        # direction: +1 spiking, -1 dropping, 0 neither
        self.level = ZScoreDepartures(
            cfg.window,
            field=cfg.field,
            kinds=(AnomalyType.REWARD_SPIKE, AnomalyType.REWARD_DROP),
            min_points=cfg.min_points,
            min_abs_std=cfg.min_abs_std,
            min_rel_std=cfg.min_rel_std,
            z=cfg.z,
            up=cfg.detect_spike,
            down=cfg.detect_drop,
        )
        self.restore(state)

    def observe(self, point: MetricPoint, value: float | None, out: list[Anomaly]) -> None:
        if value is not None:
            self.level.observe(point, value, out, self._describe)
        self._collapse(point, out)

    def _describe(self, point: MetricPoint, value: float, departure: Departure) -> str:
        cfg = self.cfg
        spike = departure.direction > 0
        return (
            f"{cfg.field} {'spike' if spike else 'drop'} at step {point.step}: {fmt(value)} "
            f"is {fmt(abs(departure.z))} std from the mean {fmt(departure.mean)} of the last "
            f"{departure.points} points (limit {fmt(cfg.z)})"
        )

    def _collapse(self, point: MetricPoint, out: list[Anomaly]) -> None:
        std = self._std(point)
        frac = self._zero_std_frac(point)
        if std is None and frac is None:
            return
        collapsed = (std is not None and std <= self._collapse_std_eps) or (
            frac is not None and frac >= self._zero_std_frac_max
        )
        if not collapsed:
            self.collapse_run = 0
            return
        cfg = self.cfg
        self.collapse_run += 1
        if self.collapse_run != cfg.collapse_steps:
            return
        parts = []
        window: dict[str, float] = {"steps": float(self.collapse_run)}
        if std is not None:
            parts.append(f"{cfg.std_field}={fmt(std)}")
            window[cfg.std_field] = std
        if frac is not None:
            parts.append(f"zero-std fraction {fmt(frac)} (limit {fmt(cfg.zero_std_frac_max)})")
            window["frac_reward_zero_std"] = frac
        out.append(
            make(
                AnomalyType.REWARD_COLLAPSE,
                "warning",
                point.step,
                std if std is not None else frac,
                cfg.std_field if std is not None else "frac_reward_zero_std",
                f"reward variance collapsed for {self.collapse_run} steps (step {point.step}): "
                + ", ".join(parts),
                window,
            )
        )

    def on_rewind(self) -> None:
        self.level.direction = 0
        self.collapse_run = 0


class GradRule(SavedState):
    """Gradient explosion: a level of high norms, judged against the recent normal ones.

    A step is *high* when its norm is at least ``min_ratio`` times the median of the last
    ``window`` normal norms and more than ``z`` std above their mean. An explosion is
    ``persist_steps`` high steps among the last ``persist_window``: it is raised at the step
    that completes them and re-arms when fewer remain. One high step alone is the ordinary
    spike of a healthy run (one hard batch: single 5-12x steps, and pairs of them, in the
    corpus's healthy SFT and DPO runs), which does not call for cutting the learning rate
    tenfold; a run whose gradient has exploded stays high. High norms stay out of the
    baseline (a spike does not hide the next one, as in ZClip), unless the explosion lasts
    ``window`` steps: then it is the new level.
    """

    name = "grad"
    # A state saved by the EMA version of this rule ("ema", "warmup") starts a new window.
    saved = (
        window("window", "cfg.window"),
        # The last ``persist_window`` steps: [step, norm] for a high one, [step, None] otherwise.
        steps("recent", "cfg.persist_window"),
        flag("active"),
        count("episode"),
        count("vanish_run"),
    )
    window: RollingWindow
    recent: deque[tuple[int, float | None]]
    active: bool
    episode: int
    vanish_run: int

    def __init__(self, cfg: GradConfig, state: JsonDict) -> None:
        self.cfg = cfg
        self.value_field: str | None = cfg.field
        self.restore(state)
        # The window's values sorted (oldest first among equal ones, as ``sorted`` leaves them),
        # kept beside it for the median; derived, not saved.
        self._sorted = sorted(self.window.values)
        self._highs = sum(v is not None for _, v in self.recent)  # high steps in ``recent``
        self._vanish_eps = cfg.vanish_eps
        self._warmup_points = cfg.warmup_points
        self._min_abs_std = cfg.min_abs_std
        self._z = cfg.z
        self._min_ratio = cfg.min_ratio
        self._persist_steps = cfg.persist_steps

    def _push(self, value: float) -> None:
        """Push to the window, keeping its sorted copy."""
        w = self.window
        ordered = self._sorted
        if len(w.values) == w.size:
            del ordered[bisect.bisect_left(ordered, w.values[0])]
        w.push(value)
        bisect.insort(ordered, value)

    def observe(self, point: MetricPoint, value: float | None, out: list[Anomaly]) -> None:
        if value is None:
            return
        if value >= self._vanish_eps:
            self.vanish_run = 0
        else:
            self._vanishing(point, value, out)
        w = self.window
        if len(w.values) < self._warmup_points:
            self._push(value)
            return
        ordered = self._sorted  # the window's median
        n = len(ordered)
        mid = n // 2
        median = (
            0.0 if n == 0 else ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0
        )
        mean, std = w.mean_std()
        if self._min_abs_std > std:  # max(std, min_abs_std)
            std = self._min_abs_std
        z = (value - mean) / std
        high = z > self._z and value >= self._min_ratio * median
        recent = self.recent
        if len(recent) == recent.maxlen and recent[0][1] is not None:
            self._highs -= 1
        recent.append((point.step, value if high else None))
        if high:
            self._highs += 1
        exploding = self._highs >= self._persist_steps
        if exploding and not self.active:
            cfg = self.cfg
            highs = [(s, v) for s, v in recent if v is not None]
            first = highs[0][0]
            norms = ", ".join(fmt(v) for _, v in highs)
            out.append(
                make(
                    AnomalyType.GRAD_EXPLOSION,
                    "critical",
                    point.step,
                    value,
                    cfg.field,
                    f"{cfg.field} has exploded: {len(highs)} of the last {len(self.recent)} "
                    f"steps (from step {first}: {norms}) were at least {fmt(cfg.min_ratio)} x "
                    f"the median {fmt(median)} of the {len(w)} normal norms before them; now "
                    f"{fmt(value)} at step {point.step} ({fmt(value / median)} x, z {fmt(z)})"
                    if median > 0
                    else f"{cfg.field} has exploded: {len(highs)} of the last "
                    f"{len(self.recent)} steps from step {first} were far above its median "
                    f"{fmt(median)}",
                    {
                        "median": median,
                        "mean": mean,
                        "std": std,
                        "z": z,
                        "high_steps": float(len(highs)),
                        "first_high_step": float(first),
                    },
                )
            )
        self.episode = self.episode + 1 if exploding else 0
        self.active = exploding
        if not high or self.episode > w.size:
            self._push(value)

    def _vanishing(self, point: MetricPoint, value: float, out: list[Anomaly]) -> None:
        cfg = self.cfg
        if value >= cfg.vanish_eps:
            self.vanish_run = 0
            return
        self.vanish_run += 1
        if self.vanish_run == cfg.vanish_steps:
            out.append(
                make(
                    AnomalyType.GRAD_VANISHING,
                    "warning",
                    point.step,
                    value,
                    cfg.field,
                    f"{cfg.field} has been below {fmt(cfg.vanish_eps)} for {self.vanish_run} "
                    f"steps (step {point.step}, now {fmt(value)})",
                    {"eps": cfg.vanish_eps, "steps": float(self.vanish_run)},
                )
            )

    def on_rewind(self) -> None:
        self.active = False
        self.episode = 0
        self.vanish_run = 0
        self.recent.clear()
        self._highs = 0


class PlateauRule(SavedState):
    """torch.optim.lr_scheduler.ReduceLROnPlateau's bookkeeping, one evaluation per block."""

    name = "plateau"
    saved = (
        number("block_sum"),
        count("block_n"),
        optional_number("best"),
        count("best_step"),
        count("num_bad"),
        count("cooldown_counter"),
    )
    block_sum: float
    block_n: int
    best: float | None
    best_step: int
    num_bad: int
    cooldown_counter: int

    def __init__(self, cfg: PlateauConfig, state: JsonDict) -> None:
        self.cfg = cfg
        self.value_field: str | None = cfg.field
        self.restore(state)
        self._eval_every = cfg.eval_every

    def is_better(self, a: float, best: float) -> bool:
        cfg = self.cfg
        if cfg.mode == "min":
            if cfg.threshold_mode == "rel":
                return a < best * (1.0 - cfg.threshold)
            return a < best - cfg.threshold
        if cfg.threshold_mode == "rel":
            return a > best * (1.0 + cfg.threshold)
        return a > best + cfg.threshold

    def observe(self, point: MetricPoint, value: float | None, out: list[Anomaly]) -> None:
        if value is None:
            return
        self.block_sum += value
        self.block_n += 1
        if self.block_n < self._eval_every:
            return
        cfg = self.cfg
        current = self.block_sum / self.block_n
        self.block_sum = 0.0
        self.block_n = 0
        if self.best is None or self.is_better(current, self.best):
            self.best = current
            self.best_step = point.step
            self.num_bad = 0
        else:
            self.num_bad += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad = 0
        if self.num_bad > cfg.patience:
            out.append(
                make(
                    AnomalyType.LOSS_PLATEAU,
                    "warning",
                    point.step,
                    current,
                    cfg.field,
                    f"{cfg.field} has not improved on its best {fmt(self.best)} (step "
                    f"{self.best_step}) for {self.num_bad} evaluations of {cfg.eval_every} "
                    f"points (patience {cfg.patience}, threshold {fmt(cfg.threshold)} "
                    f"{cfg.threshold_mode})",
                    {"best": self.best, "evaluations_without_improvement": float(self.num_bad)},
                )
            )
            self.cooldown_counter = cfg.cooldown
            self.num_bad = 0

    def on_rewind(self) -> None:
        self.block_sum = 0.0
        self.block_n = 0


class EntropyRule(SavedState):
    name = "entropy"
    saved = (
        ema("early", "cfg.early_alpha"),
        ema("recent", "cfg.recent_alpha"),
        flag("seen_reward"),
        flag("active"),
    )
    early: EmaStats
    recent: EmaStats
    seen_reward: bool
    active: bool

    def __init__(self, cfg: EntropyConfig, state: JsonDict) -> None:
        self.cfg = cfg
        self.value_field: str | None = cfg.field
        self.restore(state)
        self._early_points = cfg.early_points
        self._rl_only = cfg.rl_only
        self._ratio = cfg.ratio

    def observe(self, point: MetricPoint, value: float | None, out: list[Anomaly]) -> None:
        if not self.seen_reward and point.reward_mean is not None:
            self.seen_reward = True
        if value is None:
            return
        self.recent.push(value)
        if self.early.count < self._early_points:
            self.early.push(value)
            return
        if self._rl_only and not self.seen_reward:
            return
        reference = self.early.mean
        limit = self._ratio * reference
        collapsed = reference > 0 and self.recent.mean < limit
        if collapsed and not self.active:
            cfg = self.cfg
            out.append(
                make(
                    AnomalyType.ENTROPY_COLLAPSE,
                    "warning",
                    point.step,
                    value,
                    cfg.field,
                    f"{cfg.field} collapsed at step {point.step}: recent EMA "
                    f"{fmt(self.recent.mean)} is below {fmt(cfg.ratio)} x its early EMA "
                    f"{fmt(reference)}",
                    {"early_ema": reference, "recent_ema": self.recent.mean, "threshold": limit},
                )
            )
        self.active = collapsed

    def on_rewind(self) -> None:
        self.active = False


class LengthRule(SavedState):
    name = "length"
    saved = (
        part("level"),
        number("clip_ref_sum"),
        count("clip_ref_n"),
        flag("clip_active"),
        floats("clip_recent", "cfg.clip_ratio_smoothing"),
    )
    clip_ref_sum: float
    clip_ref_n: int
    clip_active: bool
    clip_recent: deque[float]

    def __init__(self, cfg: LengthConfig, state: JsonDict) -> None:
        self.cfg = cfg
        self.value_field: str | None = cfg.field
        self._clip_ratio = first_finite_getter(cfg.clip_ratio_keys)
        self.level = ZScoreDepartures(
            cfg.window,
            field=cfg.field,
            kinds=(AnomalyType.LENGTH_EXPLOSION, AnomalyType.LENGTH_COLLAPSE),
            min_points=cfg.min_points,
            min_abs_std=cfg.min_abs_std,
            min_rel_std=0.0,
            z=cfg.z,
            min_rel_change=cfg.min_rel_change,
        )
        self.restore(state)

    def observe(self, point: MetricPoint, value: float | None, out: list[Anomaly]) -> None:
        if value is not None:
            self.level.observe(point, value, out, self._describe)
        clip = self._clip_ratio(point)
        if clip is not None:
            self._clip(point, clip, out)

    def _describe(self, point: MetricPoint, value: float, departure: Departure) -> str:
        explosion = departure.direction > 0
        return (
            f"response length {'explosion' if explosion else 'collapse'} at step "
            f"{point.step}: mean length {fmt(value)} vs {fmt(departure.mean)} over the last "
            f"{departure.points} points (z {fmt(departure.z)}, limit {fmt(self.cfg.z)})"
        )

    def _clip(self, point: MetricPoint, clip: float, out: list[Anomaly]) -> None:
        cfg = self.cfg
        recent = self.clip_recent
        recent.append(clip)
        if self.clip_ref_n < cfg.min_points:
            self.clip_ref_sum += clip
            self.clip_ref_n += 1
            return
        reference = self.clip_ref_sum / self.clip_ref_n
        # The mean of the last few steps: the ratio of one step of a small batch is noisy.
        level = math.fsum(recent) / len(recent)
        rising = level > cfg.clip_ratio_max and level > reference + cfg.clip_ratio_rise
        if rising and not self.clip_active:
            out.append(
                make(
                    AnomalyType.LENGTH_EXPLOSION,
                    "warning",
                    point.step,
                    level,
                    "response_length_clip_ratio",
                    f"{fmt(level * 100)}% of responses hit the length limit over the last "
                    f"{len(recent)} steps at step {point.step} (now {fmt(clip * 100)}%; limit "
                    f"{fmt(cfg.clip_ratio_max * 100)}%, early level {fmt(reference * 100)}%)",
                    {"clip_ratio": level, "clip_ratio_now": clip, "early_clip_ratio": reference},
                )
            )
        self.clip_active = rising

    def on_rewind(self) -> None:
        self.level.direction = 0
        self.clip_active = False
        self.clip_recent.clear()


class MemoryRule(SavedState):
    name = "memory"
    value_field: str | None = None  # a missing usage still reads the counters
    saved = (steps("recent", "cfg.trend_points"), numbers_by_name("counters"), flag("active"))
    recent: deque[tuple[int, float]]
    counters: dict[str, float]
    active: bool

    def __init__(self, cfg: MemoryConfig, state: JsonDict) -> None:
        self.cfg = cfg
        self.restore(state)
        self._field_is_core = cfg.field in _POINT_FIELDS
        self._field = getter(cfg.field)
        self._counters = tuple((key, finite_getter(key)) for key in cfg.counter_keys)
        self._reserved = tuple(getter(key) for key in cfg.reserved_keys)
        keys = (*cfg.counter_keys, *cfg.reserved_keys)
        # The custom keys that make a point about memory when its field is missing (None when
        # some of them are canonical fields: no shortcut then).
        self._custom_keys = None if any(key in _POINT_FIELDS for key in keys) else frozenset(keys)

    def observe(self, point: MetricPoint, value: float | None, out: list[Anomaly]) -> None:
        field_value = self._field(point)
        custom = point.custom
        if field_value is None or not self._field_is_core:
            if not custom:
                return  # nothing about memory in this point
            if (
                field_value is None
                and self._custom_keys is not None
                and self._custom_keys.isdisjoint(custom)
            ):
                # No counter, no usage: what the full pass below would conclude.
                self.active = False
                return
        cfg = self.cfg
        reasons: list[str] = []
        window: dict[str, float] = {}
        for key, read_count in self._counters:
            count = read_count(point)
            if count is None:
                continue
            before = self.counters.get(key)
            self.counters[key] = count
            if before is not None and count > before:
                reasons.append(f"{key} rose from {fmt(before)} to {fmt(count)}")
                window[key] = count
        used = None  # read_first(point, cfg.reserved_keys)
        for get in self._reserved:
            raw = get(point)
            if raw is not None:
                used = _as_float(raw)
                if used is not None:
                    break
        if used is None or not math.isfinite(used):
            used = finite(field_value)
        value = used
        if used is not None:
            capacity = cfg.capacity_gb
            if capacity is None:
                capacity = read_first(point, cfg.capacity_keys)
            self.recent.append((point.step, used))
            if capacity is not None and math.isfinite(capacity) and capacity > 0:
                window["used_gb"] = used
                window["capacity_gb"] = capacity
                if used >= cfg.near_fraction * capacity:
                    reasons.append(
                        f"{fmt(used)} GB in use of {fmt(capacity)} GB "
                        f"({fmt(100 * used / capacity)}% >= {fmt(100 * cfg.near_fraction)}%)"
                    )
                elif len(self.recent) == cfg.trend_points:
                    slope = self._slope()
                    window["slope_gb_per_step"] = slope
                    if slope > 0:
                        steps_left = (capacity - used) / slope
                        if steps_left <= cfg.trend_horizon_steps:
                            reasons.append(
                                f"at +{fmt(slope)} GB/step it reaches {fmt(capacity)} GB in "
                                f"~{fmt(steps_left)} steps"
                            )
        if reasons and not self.active:
            out.append(
                make(
                    AnomalyType.GPU_MEMORY_PRESSURE,
                    "warning",
                    point.step,
                    value,
                    cfg.field,
                    f"GPU memory close to running out at step {point.step}: " + "; ".join(reasons),
                    window,
                )
            )
        self.active = bool(reasons)

    def _slope(self) -> float:
        steps = [s for s, _ in self.recent]
        values = [v for _, v in self.recent]
        n = len(values)
        mean_s = math.fsum(steps) / n
        mean_v = math.fsum(values) / n
        den = math.fsum((s - mean_s) ** 2 for s in steps)
        if den == 0:
            return linear_slope(values)
        return math.fsum((s - mean_s) * (v - mean_v) for s, v in self.recent) / den

    def on_rewind(self) -> None:
        self.active = False
        self.recent.clear()


class NewBestRewardRule(SavedState):
    name = "new_best_reward"
    saved = (
        floats("recent", "cfg.smoothing"),
        count("seen"),
        optional_number("best"),
        optional_count("last_raised_step"),
    )
    recent: deque[float]
    seen: int
    best: float | None
    last_raised_step: int | None

    def __init__(self, cfg: NewBestRewardConfig, state: JsonDict) -> None:
        self.cfg = cfg
        self.value_field: str | None = cfg.field
        self._warmup = max(cfg.warmup_points, cfg.smoothing)
        self._min_delta = cfg.min_delta
        self.restore(state)

    def observe(self, point: MetricPoint, value: float | None, out: list[Anomaly]) -> None:
        if value is None:
            return
        recent = self.recent
        recent.append(value)
        self.seen += 1
        smoothed = math.fsum(recent) / len(recent)
        best = self.best
        if self.seen < self._warmup:
            if best is None or smoothed > best:
                self.best = smoothed
            return
        if best is not None and smoothed <= best + self._min_delta:
            return
        cfg = self.cfg
        previous = self.best
        self.best = smoothed
        last = self.last_raised_step
        if last is not None and point.step - last < cfg.min_steps_between:
            return
        self.last_raised_step = point.step
        out.append(
            make(
                AnomalyType.NEW_BEST_REWARD,
                "info",
                point.step,
                smoothed,
                cfg.field,
                f"new best {cfg.field} {fmt(smoothed)} (mean of the last {len(self.recent)}) at "
                f"step {point.step}"
                + (f", previous best {fmt(previous)}" if previous is not None else ""),
                {"previous_best": previous if previous is not None else math.nan, "raw": value},
            )
        )

    def on_rewind(self) -> None:
        self.last_raised_step = None
        self.recent.clear()


class Rules:
    """The enabled rules, fed point by point. The one place that reads a rule's main field as a
    finite float: inline, so that the common float costs no call beyond the rule's ``observe``.
    """

    __slots__ = ("_observers", "rules")

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        # Each rule's reader and bound ``observe``, looked up once (they run for every point).
        self._observers = tuple(
            (None if rule.value_field is None else getter(rule.value_field), rule.observe)
            for rule in rules
        )

    def observe(self, point: MetricPoint, out: list[Anomaly]) -> None:
        """Fold one point into every rule, appending the anomalies it raises to ``out``."""
        isfinite = _isfinite
        for get, observe in self._observers:
            value = None if get is None else get(point)
            if value is not None and (value.__class__ is not float or not isfinite(value)):
                value = finite(value)  # not a float, or a non-finite one (then None)
            observe(point, value, out)


def build_rules(config: DetectorConfig, state: dict[str, JsonDict]) -> list[Rule]:
    """The enabled rules in a fixed order, each restored from its part of ``state``."""
    candidates: list[tuple[bool, Any, Any]] = [
        (config.non_finite.enabled, NonFiniteRule, config.non_finite),
        (config.loss_spike.enabled, LossSpikeRule, config.loss_spike),
        (config.kl.enabled, KlRule, config.kl),
        (config.reward.enabled, RewardRule, config.reward),
        (config.grad.enabled, GradRule, config.grad),
        (config.plateau.enabled, PlateauRule, config.plateau),
        (config.entropy.enabled, EntropyRule, config.entropy),
        (config.length.enabled, LengthRule, config.length),
        (config.memory.enabled, MemoryRule, config.memory),
        (config.new_best_reward.enabled, NewBestRewardRule, config.new_best_reward),
    ]
    rules: list[Rule] = []
    for enabled, cls, cfg in candidates:
        if enabled:
            rules.append(cls(cfg, state.get(cls.name, {})))
    return rules
