"""A golden record of what JobState.observe computes: every series of the labelled corpus, the
unit tests' series, synthetic GRPO/SFT runs with injected faults and seeded edge-case fuzz, folded
through JobState, as pydantic models and as msgspec views. For each (series, configuration):
every anomaly, the state serialised halfway, and the final state, as one JSON dump (floats as
their repr, so equal dumps mean equal bits); a digest of each is kept in
data/fold_golden.json. Any change to the detectors' outputs or their saved state changes a digest.

    python -m tests.unit.diagnostics.fold_golden            # check against the committed digests
    python -m tests.unit.diagnostics.fold_golden --write    # record them (only for a new behaviour)
    python -m tests.unit.diagnostics.fold_golden --dump DIR # the full dumps, to diff
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from bench.detect_corpus import load as load_corpus
from posttrain.diagnostics.core import DetectorConfig, JobState
from posttrain.events.codec import encode
from posttrain.events.envelope import Envelope
from posttrain.events.messages.metrics import MetricPoint, MetricsReported
from posttrain.events.views import ViewDecoder
from posttrain.service.commands import command_app, run_app
from tests.unit.diagnostics.series import healthy_long_run, recorded, troubled_run

GOLDEN = Path(__file__).parent / "data" / "fold_golden.json"

# bench.detect_latency's _healthy and fault kinds, frozen here (a change to the bench must not
# change the golden record), mapped to canonical names as the TRL callback does.
_TRL = {
    "reward": "reward_mean",
    "kl": "kl_divergence",
    "completions/mean_length": "response_length_mean",
}


def _healthy(rng: random.Random, step: int, flat_from: int | None, rl: bool) -> dict[str, Any]:
    at = step if flat_from is None else min(step, flat_from)
    fields: dict[str, Any] = {
        "loss": 2.0 * math.exp(-at / 4000) + rng.gauss(0, 0.004),
        "grad_norm": 1.0 + rng.gauss(0, 0.05),
        "learning_rate": 1e-5,
    }
    if rl:
        fields.update(
            {
                "reward": 0.5 + rng.gauss(0, 0.02),
                "reward_std": 0.3 + rng.gauss(0, 0.01),
                "frac_reward_zero_std": 0.1,
                "kl": 0.02 + abs(rng.gauss(0, 0.002)),
                "entropy": 1.5 + rng.gauss(0, 0.02),
                "completions/mean_length": 120.0 + rng.gauss(0, 3.0),
            }
        )
    else:
        fields["mean_token_accuracy"] = 0.6 + rng.gauss(0, 0.01)
    return fields


def _fault(kind: str, fields: dict[str, Any]) -> None:
    if kind == "nan":
        fields["loss"] = math.nan
    elif kind == "kl":
        fields["kl"] = 5.0
    elif kind == "grad":
        fields["grad_norm"] = fields["grad_norm"] * 30
    elif kind == "entropy":
        fields["entropy"] = 0.05
    elif kind == "reward_collapse":
        fields["reward_std"] = 0.0
        fields["frac_reward_zero_std"] = 1.0
    elif kind == "length":
        fields["completions/mean_length"] = 480.0
    elif kind == "loss_spike":
        fields["loss"] = fields["loss"] * 4


_LASTS = {"nan": 1, "grad": 20, "loss_spike": 3}


def _point(step: int, fields: dict[str, Any]) -> MetricPoint:
    canonical: dict[str, Any] = {}
    custom: dict[str, Any] = {}
    for key, value in fields.items():
        name = _TRL.get(key, key)
        if name in MetricPoint.model_fields:
            canonical[name] = value
        else:
            custom[key] = value
    return MetricPoint(step=step, timestamp=float(step), custom=custom, **canonical)


def synthetic(kind: str | None, rl: bool, steps: int = 400, seed: int = 7) -> list[MetricPoint]:
    rng = random.Random(f"{seed}-{kind}-{rl}")
    onset = 150
    out = []
    for step in range(1, steps + 1):
        flat_from = onset if kind == "plateau" and step >= onset else None
        fields = _healthy(rng, step, flat_from, rl)
        if kind is not None and kind != "plateau" and step >= onset:
            lasts = _LASTS.get(kind)
            if lasts is None or step - onset < lasts:
                _fault(kind, fields)
        out.append(_point(step, fields))
    return out


_CUSTOM_KEYS = (
    "frac_reward_zero_std",
    "completions/clipped_ratio",
    "response_length_clip_ratio",
    "gpu_memory_total_gb",
    "gpu_memory_reserved_gb",
    "num_alloc_retries",
    "num_ooms",
    "reward_std",  # a core name under custom is not read from custom
    "something_else",
)


def _odd(rng: random.Random, typical: float) -> Any:
    r = rng.random()
    if r < 0.25:
        return math.nan
    if r < 0.4:
        return math.inf if rng.random() < 0.5 else -math.inf
    if r < 0.55:
        return rng.choice(["NaN", "Infinity", "-Infinity", "text"])
    if r < 0.7:
        return int(typical)
    if r < 0.8:
        return rng.random() < 0.5
    if r < 0.9:
        return 0.0
    return typical * 1000


def fuzz(seed: int, steps: int = 500) -> list[MetricPoint]:
    """Edge cases: missing fields, NaN/inf, strings and ints and bools under custom, rewinds,
    flat values, saturated KL, vanishing gradients, memory pressure."""
    rng = random.Random(seed)
    core = [
        f for f in MetricPoint.model_fields if f not in ("step", "epoch", "timestamp", "custom")
    ]
    reported = rng.sample(core, rng.randint(2, len(core)))
    customs = rng.sample(_CUSTOM_KEYS, rng.randint(0, len(_CUSTOM_KEYS)))
    base = {f: rng.uniform(0.01, 5.0) for f in core}
    base["gpu_memory_allocated_gb"] = 60.0
    odd_rate = rng.choice([0.0, 0.005, 0.03])
    points = []
    step = 0
    for i in range(steps):
        step += 1
        if rng.random() < 0.01:
            step = max(1, step - rng.randint(1, 40))  # a rollback
        fields: dict[str, Any] = {}
        phase = (i // 60) % 4
        for f in reported:
            if rng.random() < 0.1:
                continue
            v = base[f] * (1 + rng.gauss(0, 0.05))
            if phase == 1 and f in ("kl_divergence", "grad_norm", "loss", "response_length_mean"):
                v *= 20
            if phase == 2 and f == "kl_divergence":
                v = 10.0
            if phase == 2 and f == "grad_norm":
                v = 1e-9
            if phase == 3 and f in ("reward_std", "entropy"):
                v = 0.0
            if f == "gpu_memory_allocated_gb":
                v = 60.0 + 0.1 * i if phase >= 2 else 60.0
            if rng.random() < odd_rate:
                v = _odd(rng, v)
                if isinstance(v, str | bool):
                    v = math.nan  # core fields are floats
            fields[f] = v
        custom: dict[str, Any] = {}
        for key in customs:
            if rng.random() < 0.1:
                continue
            if key == "gpu_memory_total_gb":
                v = 80.0
            elif key == "gpu_memory_reserved_gb":
                v = 70.0 + 0.05 * i
            elif key in ("num_alloc_retries", "num_ooms"):
                v = i // 100
            elif key in ("frac_reward_zero_std",):
                v = 0.9 if phase == 3 else 0.1
            else:
                v = 0.5 if phase == 1 else rng.uniform(0.0, 0.1)
            if rng.random() < odd_rate:
                v = _odd(rng, float(v))
            custom[key] = v
        points.append(MetricPoint(step=step, timestamp=float(i), custom=custom, **fields))
    return points


def configs() -> dict[str, DetectorConfig]:
    return {
        "default": DetectorConfig(),
        "varied": DetectorConfig.model_validate(
            {
                "non_finite": {"fields": ["loss", "grad_norm", "frac_reward_zero_std", "x"]},
                "loss_spike": {"skip_sampled_rl": False, "window": 30, "min_points": 5},
                "kl": {"target": 0.05, "saturation_value": None, "smoothing": 4},
                "reward": {"detect_drop": False, "window": 20, "min_points": 5},
                "grad": {"persist_steps": 1, "persist_window": 1, "warmup_points": 5},
                "plateau": {"mode": "max", "threshold_mode": "abs", "eval_every": 3},
                "entropy": {"rl_only": False},
                "length": {"field": "loss", "min_points": 5},
                "memory": {"capacity_gb": 75.0},
                "new_best_reward": {"field": "entropy", "min_steps_between": 0},
            }
        ),
    }


def all_series() -> Iterator[tuple[str, list[MetricPoint]]]:
    for s in load_corpus():
        yield f"corpus/{s.name}", list(s.points)
    yield "unit/grpo_tiny", recorded("grpo_tiny.json")
    yield "unit/sft_tiny", recorded("sft_tiny.json")
    yield "unit/healthy_long_run", healthy_long_run()
    yield "unit/troubled_run", troubled_run()
    kinds = [None, "nan", "kl", "grad", "entropy", "reward_collapse", "length", "loss_spike"]
    for rl in (True, False):
        for kind in [*kinds, "plateau"]:
            steps = 900 if kind == "plateau" else 400
            name = f"synthetic/{'grpo' if rl else 'sft'}-{kind or 'healthy'}"
            yield name, synthetic(kind, rl, steps)
    for seed in range(12):
        yield f"fuzz/{seed}", fuzz(seed)


def as_views(points: Sequence[MetricPoint], batch: int = 50) -> list[Any]:
    """The points as the stream reads them: MetricsReported batches through ViewDecoder (a
    batch that a view cannot read, one with a NaN, comes back as models)."""
    decoder = ViewDecoder()
    out: list[Any] = []
    for i in range(0, len(points), batch):
        message = MetricsReported(
            job_id="j", source="s", first_seq=i, points=list(points[i : i + batch])
        )
        _, value, headers = encode(Envelope.create(message, key="j"))
        out.extend(decoder.decode(value, headers).data.points)
    return out


def _dumps(obj: Any) -> str:
    return json.dumps(obj, allow_nan=True)


def fold(points: Sequence[Any], config: DetectorConfig) -> str:
    """The dump of one fold: anomalies, the state halfway, the final state; with redelivered
    points (by source/seq) every 7th point, and a mid-run restore through the changelog's JSON
    checked to continue identically."""
    mid = len(points) // 2
    state = JobState(config)
    anomalies = []
    half_state: Any = None
    restored: JobState | None = None
    restored_anomalies = []
    for i, p in enumerate(points):
        if i == mid:
            half_state = state.to_dict()
            restored = JobState.from_dict(config, orjson.loads(orjson.dumps(half_state)))
        out = [a.to_dict() for a in state.observe(p, source="cb", seq=i)]
        anomalies.append(out)
        if i % 7 == 3:
            assert state.observe(p, source="cb", seq=i) == []
        if restored is not None:
            restored_anomalies.append(
                [a.to_dict() for a in restored.observe(p, source="cb", seq=i)]
            )
    final = state.to_dict()
    if restored is not None:
        assert _dumps(restored_anomalies) == _dumps(anomalies[mid:]), "restore diverged"
        assert _dumps(restored.to_dict()) == _dumps(final), "restore diverged"
    return _dumps({"anomalies": anomalies, "half_state": half_state, "final_state": final})


def compute(dump_dir: Path | None = None, views: bool = True) -> dict[str, str]:
    digests: dict[str, str] = {}
    cfgs = configs()
    for name, points in all_series():
        forms: list[tuple[str, Sequence[Any]]] = [("models", points)]
        if views:
            forms.append(("views", as_views(points)))
        for cname, config in cfgs.items():
            if cname != "default" and not (name.startswith(("fuzz/", "synthetic/", "unit/"))):
                continue
            for form, pts in forms:
                dump = fold(pts, config)
                key = f"{name}|{cname}|{form}"
                digests[key] = hashlib.sha256(dump.encode()).hexdigest()[:16]
                if dump_dir is not None:
                    path = dump_dir / (key.replace("/", "_").replace("|", "_") + ".json")
                    path.write_text(dump)
    return digests


def check(dump_dir: Path | None = None) -> list[str]:
    """The keys whose digest differs from the committed ones."""
    expected = json.loads(GOLDEN.read_text())
    got = compute(dump_dir)
    return sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))


app = command_app()


@app.command()
def _golden(
    write: Annotated[
        bool, typer.Option("--write", help="record the digests (only for a new behaviour)")
    ] = False,
    dump: Annotated[Path | None, typer.Option(help="write the full dumps here, to diff")] = None,
) -> None:
    """Check the detectors' fold against the committed digests (exit 1 when any differs)."""
    if dump:
        dump.mkdir(parents=True, exist_ok=True)
    if write:
        digests = compute(dump)
        GOLDEN.write_text(json.dumps(digests, indent=0, sort_keys=True) + "\n")
        print(f"wrote {len(digests)} digests")
        return
    bad = check(dump)
    print(f"{len(bad)} differ" + (": " + ", ".join(bad[:20]) if bad else ""))
    if bad:
        raise typer.Exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, "python -m tests.unit.diagnostics.fold_golden")


if __name__ == "__main__":
    sys.exit(main())
