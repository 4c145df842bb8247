"""The labelled corpus of metric series that ``bench.detect_quality`` scores the detectors on.

Each series is one real tiny training run made by the trainer agent's own trainers (TRL's SFT,
DPO and GRPO through ``tasks.train``, metrics mapped by the shipped ``PosttrainCallback``),
recorded by ``bench.record_detect_corpus``. A series is healthy, or faulty with the fault kinds
injected into its training loop and the step at which each starts. One JSON file per series
under ``bench/data/detect_corpus/``, columnar to stay small::

    {"name": "sft-spike-s0", "algorithm": "sft", "seed": 0, "learning_rate": 0.003,
     "faults": [{"kind": "loss_spike", "step": 120, "until": 120}],
     "injection": "batch of random tokens at step 120",
     "steps": [1, 2, ...], "fields": {"loss": [0.61, ...], ...}, "custom": {...}}

``faults`` empty means healthy; ``until`` marks a transient fault's last step (bad batches).
Values keep 5 significant digits; non-finite values are the
strings "NaN", "Infinity", "-Infinity" (as on the wire); a missing value is null. Only the
fields some detector reads are kept (every canonical field a trainer logged, and the custom keys
named in ``DetectorConfig``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.diagnostics.core.anomaly import AnomalyType
from posttrain.events.messages.metrics import CORE_FIELDS, MetricPoint

CORPUS_DIR = Path(__file__).parent / "data" / "detect_corpus"

T = AnomalyType


@dataclass(frozen=True, slots=True)
class FaultRules:
    """Which rules name a fault kind: ``expected`` are the rules meant to catch it (their
    recall is measured on it); ``accepted`` also name it correctly (a divergence that ends in
    NaN, the gradient of a loss spike)."""

    expected: frozenset[AnomalyType]
    accepted: frozenset[AnomalyType] = frozenset()

    @property
    def naming(self) -> frozenset[AnomalyType]:
        return self.expected | self.accepted


FAULT_RULES: dict[str, FaultRules] = {
    "nan": FaultRules(frozenset({T.NON_FINITE})),
    "divergence": FaultRules(
        frozenset({T.LOSS_SPIKE, T.GRAD_EXPLOSION}), frozenset({T.NON_FINITE})
    ),
    "kl_blowup": FaultRules(frozenset({T.KL_BLOWUP}), frozenset({T.KL_SATURATED})),
    "reward_collapse": FaultRules(frozenset({T.REWARD_COLLAPSE}), frozenset({T.REWARD_DROP})),
    "entropy_collapse": FaultRules(frozenset({T.ENTROPY_COLLAPSE})),
    "loss_spike": FaultRules(frozenset({T.LOSS_SPIKE}), frozenset({T.GRAD_EXPLOSION})),
    "grad_explosion": FaultRules(
        frozenset({T.GRAD_EXPLOSION}), frozenset({T.LOSS_SPIKE, T.NON_FINITE})
    ),
}
# A transient fault (one bad batch) is over at ``until``; what a rule raises more than this many
# steps later is not about it.
TRANSIENT_SLACK = 5
FAULT_KINDS = tuple(FAULT_RULES)
# sft, dpo, grpo: TRL's trainers through the agent's train_model; loop: the SGD loop of
# posttrain.testing.training that the closed-loop tests train.
ALGORITHMS = ("sft", "dpo", "grpo", "loop")
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault of ``kind`` from ``step`` on; ``until`` is its last step when it is transient
    (None: it lasts to the end of the run)."""

    kind: str
    step: int
    until: int | None = None

    def covers(self, step: int) -> bool:
        """Whether an anomaly at ``step`` can be about this fault."""
        if step < self.step:
            return False
        return self.until is None or step <= self.until + TRANSIENT_SLACK


@dataclass(frozen=True, slots=True)
class Series:
    """One labelled run."""

    name: str
    algorithm: str
    seed: int
    learning_rate: float
    faults: tuple[Fault, ...]
    injection: str
    points: tuple[MetricPoint, ...]

    @property
    def healthy(self) -> bool:
        return not self.faults

    @property
    def fault_step(self) -> int | None:
        """Where the first fault starts (None for a healthy run)."""
        return min(f.step for f in self.faults) if self.faults else None


def encode_value(value: float | None) -> float | str | None:
    if value is None:
        return None
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return float(f"{value:.5g}")


def decode_value(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        return _NON_FINITE[value]
    return float(value)


def to_json(series: Series) -> dict[str, Any]:
    """The file form of a series."""
    fields: dict[str, list[Any]] = {}
    custom: dict[str, list[Any]] = {}
    names = [n for n in CORE_FIELDS if any(_number(p, n) is not None for p in series.points)]
    custom_names = sorted({k for p in series.points for k in p.custom})
    for name in names:
        fields[name] = [encode_value(_number(p, name)) for p in series.points]
    for key in custom_names:
        custom[key] = [encode_value(_custom_number(p, key)) for p in series.points]
    return {
        "name": series.name,
        "algorithm": series.algorithm,
        "seed": series.seed,
        "learning_rate": series.learning_rate,
        "faults": [
            {"kind": f.kind, "step": f.step, **({} if f.until is None else {"until": f.until})}
            for f in series.faults
        ],
        "injection": series.injection,
        "steps": [p.step for p in series.points],
        "fields": fields,
        "custom": custom,
    }


def from_json(data: dict[str, Any]) -> Series:
    """A series from its file form; rejects an unknown algorithm or fault kind."""
    name = str(data["name"])
    if data["algorithm"] not in ALGORITHMS:
        raise ValueError(f"{name}: algorithm {data['algorithm']!r} not in {ALGORITHMS}")
    faults = tuple(
        Fault(str(f["kind"]), int(f["step"]), None if f.get("until") is None else int(f["until"]))
        for f in data["faults"]
    )
    for fault in faults:
        if fault.kind not in FAULT_RULES:
            raise ValueError(f"{name}: fault kind {fault.kind!r} not in {FAULT_KINDS}")
    steps = [int(s) for s in data["steps"]]
    columns = {k: [decode_value(v) for v in vs] for k, vs in data["fields"].items()}
    custom_columns = {k: [decode_value(v) for v in vs] for k, vs in data["custom"].items()}
    for key, values in [*columns.items(), *custom_columns.items()]:
        if len(values) != len(steps):
            raise ValueError(f"{name}: {key} has {len(values)} values for {len(steps)} steps")
    points = []
    for i, step in enumerate(steps):
        fields = {k: v[i] for k, v in columns.items() if v[i] is not None}
        custom = {k: v[i] for k, v in custom_columns.items() if v[i] is not None}
        points.append(MetricPoint(step=step, timestamp=float(step), custom=custom, **fields))
    return Series(
        name=name,
        algorithm=str(data["algorithm"]),
        seed=int(data["seed"]),
        learning_rate=float(data["learning_rate"]),
        faults=faults,
        injection=str(data.get("injection", "")),
        points=tuple(points),
    )


def save(series: Series, directory: Path = CORPUS_DIR) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{series.name}.json"
    path.write_text(json.dumps(to_json(series), separators=(",", ":")) + "\n")
    return path


def load(directory: Path = CORPUS_DIR) -> list[Series]:
    """Every series of the corpus, by name."""
    return [from_json(json.loads(p.read_text())) for p in sorted(directory.glob("*.json"))]


def iter_files(directory: Path = CORPUS_DIR) -> Iterator[Path]:
    return iter(sorted(directory.glob("*.json")))


def _number(point: MetricPoint, name: str) -> float | None:
    value = getattr(point, name)
    return None if value is None else float(value)


def _custom_number(point: MetricPoint, key: str) -> float | None:
    value = point.custom.get(key)
    if isinstance(value, str):
        return _NON_FINITE.get(value)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
