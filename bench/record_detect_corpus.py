"""Record the labelled detection corpus (``bench.detect_corpus``) from real tiny training runs.

    python -m bench.record_detect_corpus              # every series: a few minutes on one core
    python -m bench.record_detect_corpus --only grpo-kl-lr50x-s1 --only sft-nan-s0
    python -m bench.record_detect_corpus --list

Every run is made by the trainer agent's own ``train_model`` code (``tasks.train``: the same
TRL trainer construction and arguments a pipeline stage gets) on the tiny Llama of
``trainer_agent.tiny``, learning single-digit addition from ``examples/data``, with its metrics
mapped by the shipped ``PosttrainCallback`` (``events.aliases``). DPO and GRPO start from the SFT
model of the demo pipeline, trained first. Faults are injected into the real training loop at a
known step:

- ``lr xF at step N``: the learning rate is scaled by F (as the platform's own
  ``adjust_learning_rate`` does): a far too high rate diverges SFT/DPO and blows up GRPO's KL or
  collapses its entropy;
- ``corrupt batch at step N``: that step's batch is replaced by random tokens (a loss spike);
- ``NaN weights at step N``: one embedding row is set to NaN before the step (the run turns
  NaN, as after an fp16 overflow);
- ``reward broken at step N``: from that step the reward function returns 0 for everything (a
  grader that fails silently: no reward variance, GRPO has no signal).

Each fault's label is checked against the recorded metrics (``_check``) before a series is
written: a run whose injection did not produce the labelled fault stops the recording, so that
no label is a guess. Runs are deterministic on one CPU thread for a given torch build.
"""

from __future__ import annotations

import importlib
import math
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from bench.detect_corpus import CORPUS_DIR, Fault, Series, save
from posttrain.events.messages.metrics import MetricPoint
from posttrain.service.commands import bad_option, command_app, run_app

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data"
# Canonical fields kept (tokens_per_second and the like are wall-clock: no detector reads them,
# and they would make the corpus differ from one machine to the next).
KEPT_FIELDS = (
    "loss",
    "learning_rate",
    "grad_norm",
    "reward_mean",
    "reward_std",
    "kl_divergence",
    "entropy",
    "response_length_mean",
    "clip_frac",
)


@dataclass(frozen=True)
class Injection:
    kind: str  # lr_scale | corrupt_batch | nan_weights | reward_broken
    step: int
    factor: float = 1.0
    until: int | None = None  # corrupt_batch: the last corrupted step (default: ``step``)

    @property
    def last(self) -> int:
        return self.step if self.until is None else self.until

    def describe(self) -> str:
        batches = (
            f"batch of random tokens at step {self.step}"
            if self.last == self.step
            else f"batches of random tokens at steps {self.step}-{self.last}"
        )
        return {
            "lr_scale": f"learning rate x{self.factor:g} at step {self.step}",
            "corrupt_batch": batches,
            "nan_weights": f"an embedding row set to NaN before step {self.step}",
            "reward_broken": f"reward function returns 0 from step {self.step}",
            "loss_scale": f"the loss x{self.factor:g} at step {self.step}",
            "loss_nan": f"the loss x NaN from step {self.step}",
        }[self.kind]


@dataclass(frozen=True)
class RunSpec:
    name: str
    algorithm: str
    seed: int
    learning_rate: float
    max_steps: int
    faults: tuple[str, ...] = ()
    injection: Injection | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _sft(name: str, seed: int, lr: float, **kw: Any) -> RunSpec:
    return RunSpec(name, "sft", seed, lr, kw.pop("steps", 200), **kw)


def _dpo(name: str, seed: int, lr: float, **kw: Any) -> RunSpec:
    return RunSpec(name, "dpo", seed, lr, kw.pop("steps", 80), **kw)


def _grpo(name: str, seed: int, lr: float, **kw: Any) -> RunSpec:
    return RunSpec(name, "grpo", seed, lr, kw.pop("steps", 100), **kw)


def _at(kind: str, step: int, factor: float = 1.0, until: int | None = None) -> Injection:
    return Injection(kind, step, factor, until)


# The demo pipeline's settings (examples/pipelines/arithmetic.yaml) are the healthy centre;
# seeds and learning rates vary around them.
SPECS: tuple[RunSpec, ...] = (
    # --- healthy ---
    _sft("sft-demo", 0, 3e-3),
    _sft("sft-s1", 1, 3e-3),
    _sft("sft-s2", 2, 3e-3),
    _sft("sft-lr1e-3-s0", 0, 1e-3),
    _sft("sft-lr1e-3-s1", 1, 1e-3),
    _sft("sft-lr5e-3-s1", 1, 5e-3),
    # (Not lr 1e-2: that run's loss goes 0.57 -> 1.53 -> 0.6 by itself over steps 149-155, a
    # bump that is neither clearly healthy nor a fault with a known start.)
    _dpo("dpo-s0", 0, 2e-4),
    _dpo("dpo-s1", 1, 2e-4),
    _dpo("dpo-lr1e-4-s2", 2, 1e-4),
    _dpo("dpo-lr5e-4-s0", 0, 5e-4),
    _grpo("grpo-s1", 1, 2e-4),
    _grpo("grpo-s2", 2, 2e-4),
    _grpo("grpo-s3", 3, 2e-4),
    _grpo("grpo-lr1e-4-s1", 1, 1e-4),
    _grpo("grpo-lr5e-4-s2", 2, 5e-4),
    _grpo("grpo-beta004-s4", 4, 2e-4, extra={"kl_coef": 0.04}),
    # The torch loop the closed-loop tests run (posttrain.testing.training: a linear regression
    # trained with plain SGD, seed fixed by the loop).
    RunSpec("loop-lr0.05", "loop", 0, 0.05, 120),
    RunSpec("loop-lr0.02", "loop", 0, 0.02, 120),
    # --- faulty ---
    _sft("sft-nan-s0", 0, 3e-3, steps=120, faults=("nan",), injection=_at("nan_weights", 80)),
    _dpo("dpo-nan-s1", 1, 2e-4, faults=("nan",), injection=_at("nan_weights", 50)),
    _sft(
        "sft-diverge-s1",
        1,
        3e-3,
        steps=150,
        faults=("divergence",),
        injection=_at("lr_scale", 80, 100.0),
    ),
    _sft(
        "sft-diverge-s2",
        2,
        1e-3,
        steps=150,
        faults=("divergence",),
        injection=_at("lr_scale", 100, 300.0),
    ),
    # (DPO at x200 is not here: its model is wrecked, entropy x10, but DPO's loss compares the
    # policy with its reference and stays near log 2: no loss, gradient or NaN shows a fault
    # that any rule is meant to see; the label check refuses it.)
    _sft("sft-spike-s0", 0, 3e-3, faults=("loss_spike",), injection=_at("corrupt_batch", 120)),
    _sft("sft-spike-s2", 2, 1e-3, faults=("loss_spike",), injection=_at("corrupt_batch", 90)),
    # A corrupt shard: eight bad batches in a row (the loss and the gradient stay up).
    _sft(
        "sft-shard-s1",
        1,
        3e-3,
        steps=160,
        faults=("loss_spike",),
        injection=_at("corrupt_batch", 100, until=107),
    ),
    # One step's loss x1000 in the SGD loop: the weights jump, and the gradient stays tens of
    # times its level while they come back (no optimizer normalises it, unlike Adam above).
    RunSpec(
        "loop-explode-lr0.05",
        "loop",
        0,
        0.05,
        120,
        faults=("grad_explosion",),
        injection=_at("loss_scale", 60, 1000.0),
    ),
    RunSpec(
        "loop-explode-lr0.02",
        "loop",
        0,
        0.02,
        120,
        faults=("grad_explosion",),
        injection=_at("loss_scale", 80, 300.0),
    ),
    RunSpec(
        "loop-nan-lr0.05", "loop", 0, 0.05, 120, faults=("nan",), injection=_at("loss_nan", 70)
    ),
    _grpo("grpo-kl-lr50x-s1", 1, 2e-4, faults=("kl_blowup",), injection=_at("lr_scale", 50, 50.0)),
    # A far too high rate in GRPO does it all: the policy leaves the reference (KL), turns
    # deterministic (entropy) and its groups stop differing (reward variance).
    _grpo(
        "grpo-lr30x-s2",
        2,
        2e-4,
        faults=("kl_blowup", "entropy_collapse", "reward_collapse"),
        injection=_at("lr_scale", 40, 30.0),
    ),
    _grpo(
        "grpo-lr100x-s3",
        3,
        2e-4,
        faults=("kl_blowup", "entropy_collapse", "reward_collapse"),
        injection=_at("lr_scale", 40, 100.0),
    ),
    _grpo(
        "grpo-reward-broken-s1",
        1,
        2e-4,
        faults=("reward_collapse",),
        injection=_at("reward_broken", 50),
    ),
    _grpo(
        "grpo-reward-broken-s3",
        3,
        2e-4,
        faults=("reward_collapse",),
        injection=_at("reward_broken", 40),
    ),
)


# --- the injected faults ---------------------------------------------------------------------

# The reward function the trainer calls, named "bench.record_detect_corpus:graded" in the run's
# config as a user names their own; ``reward_broken`` breaks it from a step on. The trainer
# imports the module by that name: its state is read there, not in ``__main__``.
_REWARD: dict[str, int | None] = {"broken_from": None, "step": 0}


def _reward_state() -> dict[str, int | None]:
    module = importlib.import_module("bench.record_detect_corpus")
    state: dict[str, int | None] = module._REWARD
    return state


def graded(completions: list[Any], **columns: Any) -> list[float]:
    from posttrain.trainer_agent.tasks.rewards import arithmetic

    state = _reward_state()
    broken_from, step = state["broken_from"], state["step"]
    if broken_from is not None and step is not None and step >= broken_from:
        return [0.0] * len(completions)
    return arithmetic(completions, **columns)


def _install(trainer: Any, injection: Injection | None, tokenizer: Any) -> None:
    """Wire the injection into the trainer's loop (on the step whose logged number is
    ``injection.step``: HF's ``global_step`` is one less while that step runs)."""
    import torch
    from transformers import PrinterCallback, TrainerCallback

    from posttrain.trainer_agent.hf_callback import scale_learning_rate

    reward = _reward_state()
    reward["broken_from"] = None
    reward["step"] = 0
    plan = injection if injection is not None else Injection("none", -1)

    class Inject(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            step = int(state.global_step) + 1
            reward["step"] = step
            if step != plan.step:
                return
            if plan.kind == "lr_scale":
                scale_learning_rate(kw.get("optimizer"), kw.get("lr_scheduler"), plan.factor)
            elif plan.kind == "nan_weights":
                embedding = kw["model"].get_input_embeddings().weight
                with torch.no_grad():
                    embedding[tokenizer.convert_tokens_to_ids("=")] = math.nan

    trainer.remove_callback(PrinterCallback)  # every step's logs on stdout
    trainer.add_callback(Inject())
    if plan.kind == "reward_broken":
        reward["broken_from"] = plan.step
    if plan.kind == "corrupt_batch":
        original = trainer.training_step
        generator = torch.Generator().manual_seed(1234)

        def training_step(model: Any, inputs: dict[str, Any], *args: Any, **kw: Any) -> Any:
            if plan.step <= int(trainer.state.global_step) + 1 <= plan.last:
                inputs = dict(inputs)
                ids = inputs["input_ids"]
                noise = torch.randint(4, len(tokenizer), ids.shape, generator=generator)
                inputs["input_ids"] = torch.where(inputs["attention_mask"].bool(), noise, ids)
                if "labels" in inputs:
                    labels = inputs["labels"]
                    inputs["labels"] = torch.where(labels == -100, labels, inputs["input_ids"])
            return original(model, inputs, *args, **kw)

        trainer.training_step = training_step


# --- one run ---------------------------------------------------------------------------------


class Recorder:
    """The reporter a stage gives ``PosttrainCallback``: here it keeps the mapped points."""

    def __init__(self) -> None:
        from posttrain.events.aliases import to_point

        self._to_point = to_point
        self.points: list[MetricPoint] = []

    def __call__(self, step: int, epoch: float | None = None, **fields: Any) -> None:
        point = self._to_point(step, epoch, float(step), fields)
        kept = {name: getattr(point, name) for name in KEPT_FIELDS}
        custom = {k: v for k, v in point.custom.items() if k in _DETECTOR_KEYS}
        self.points.append(
            MetricPoint(
                step=step,
                timestamp=float(step),
                custom=custom,
                **{k: v for k, v in kept.items() if v is not None},
            )
        )


def _detector_keys() -> frozenset[str]:
    """Every custom key some rule of the default configuration reads."""
    from posttrain.diagnostics.core.config import DetectorConfig

    keys: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)
        elif isinstance(value, str):
            keys.add(value)

    walk(DetectorConfig().model_dump())
    return frozenset(keys)


_DETECTOR_KEYS = _detector_keys()


class _LoopContext:
    """What ``posttrain.testing.training.run`` needs from its stage: no control ever comes."""

    def __init__(self, job_dir: Path, reporter: Recorder) -> None:
        from posttrain.trainer_agent.core.control import StepDirective

        self.job_dir = job_dir
        self.reporter = reporter
        self._directive = StepDirective()

    def poll_control(self) -> Any:
        return self._directive


def run_loop(spec: RunSpec, work: Path) -> Series:
    """One run of the SGD loop that the closed-loop tests train."""
    from posttrain.testing.training import run as train_loop

    injection = spec.injection
    kwargs: dict[str, Any] = {"steps": spec.max_steps, "step_s": 0.0, "lr": spec.learning_rate}
    if injection is not None and injection.kind == "loss_scale":
        kwargs.update(spike_at=injection.step, spike=injection.factor)
    elif injection is not None and injection.kind == "loss_nan":
        kwargs.update(nan_at=injection.step)
    elif injection is not None:
        raise ValueError(f"{spec.name}: the loop takes no {injection.kind} injection")
    recorder = Recorder()
    (work / spec.name).mkdir(parents=True, exist_ok=True)
    train_loop(_LoopContext(work / spec.name, recorder), **kwargs)
    return _series(spec, recorder)


def _series(spec: RunSpec, recorder: Recorder) -> Series:
    step = spec.injection.step if spec.injection else None
    transient = spec.injection is not None and spec.injection.kind == "corrupt_batch"
    until = spec.injection.last if spec.injection is not None and transient else None
    faults = tuple(Fault(kind, step, until) for kind in spec.faults if step is not None)
    return Series(
        name=spec.name,
        algorithm=spec.algorithm,
        seed=spec.seed,
        learning_rate=spec.learning_rate,
        faults=faults,
        injection=spec.injection.describe() if spec.injection else "",
        points=tuple(recorder.points),
    )


def run(spec: RunSpec, model_path: str, work: Path) -> tuple[Series, Path]:
    """Train one run; the labelled series and the directory of its final model."""
    from transformers import AutoTokenizer, set_seed

    from posttrain.trainer_agent.hf_callback import PosttrainCallback
    from posttrain.trainer_agent.tasks.data import load_rows, text_columns
    from posttrain.trainer_agent.tasks.train import _common_args, _trainer

    cfg: dict[str, Any] = {
        "algorithm": spec.algorithm,
        "max_steps": spec.max_steps,
        "learning_rate": spec.learning_rate,
        "lr_scheduler_type": "constant",
        "seed": spec.seed,
        "max_length": 16,
    }
    if spec.algorithm == "sft":
        cfg.update(batch_size=32)
        data = DATA / "addition_train.jsonl"
    elif spec.algorithm == "dpo":
        cfg.update(batch_size=16, kl_coef=0.1)
        data = DATA / "addition_dpo.jsonl"
    else:
        cfg.update(
            batch_size=32,
            num_generations=8,
            max_completion_length=3,
            kl_coef=0.1,
            reward_funcs=["bench.record_detect_corpus:graded"],
        )
        data = DATA / "addition_train.jsonl"
    cfg.update(spec.extra)
    set_seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train = text_columns(load_rows(str(data)))
    out = work / spec.name
    args = _common_args(cfg, out, spec.seed, has_eval=False)
    recorder = Recorder()
    trainer = _trainer(
        spec.algorithm, cfg, model_path, tokenizer, train, None, args, PosttrainCallback(recorder)
    )
    _install(trainer, spec.injection, tokenizer)
    trainer.train()
    final = out / "final"
    trainer.save_model(str(final))
    tokenizer.save_pretrained(str(final))
    return _series(spec, recorder), final


# --- label checks: the fault is in the metrics, whatever the detectors say ---------------------


def _values(series: Series, name: str, lo: int, hi: int) -> list[float]:
    out = []
    for p in series.points:
        if lo <= p.step < hi:
            v = getattr(p, name)
            if v is not None:
                out.append(float(v))
    return out


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _check(series: Series) -> list[str]:
    """Why a label does not hold (empty when every label is borne out by the metrics)."""
    problems = []
    end = max(p.step for p in series.points) + 1
    for fault in series.faults:
        at = fault.step
        before = {n: _finite(_values(series, n, at - 20, at)) for n in KEPT_FIELDS}
        after = {n: _values(series, n, at, end) for n in KEPT_FIELDS}
        ok = True
        if fault.kind == "nan":
            ok = any(not math.isfinite(v) for n in KEPT_FIELDS for v in after[n])
        elif fault.kind == "loss_spike":
            base = statistics.median(before["loss"])
            ok = any(v > 2 * base for v in after["loss"][:3])
        elif fault.kind == "divergence":
            # The loss leaves its level for good (DPO's loss is bounded near log 2 + margin:
            # doubling is far), or turns non-finite.
            base = statistics.median(before["loss"])
            window = after["loss"][:30]
            ok = any(not math.isfinite(v) for v in window) or (
                sum(1 for v in window if v > 1.5 * base) >= 10
            )
        elif fault.kind == "kl_blowup":
            base = statistics.median(before["kl_divergence"])
            level = statistics.median(_finite(after["kl_divergence"])[10:30] or [0.0])
            ok = level > max(10 * base, 0.15)
        elif fault.kind == "entropy_collapse":
            early = statistics.mean(_finite(_values(series, "entropy", 1, 21)))
            late = statistics.mean(_finite(after["entropy"])[-10:])
            ok = late < 0.3 * early
        elif fault.kind == "grad_explosion":
            # The norm stays at five times its level or more for half of the next ten steps.
            base = statistics.median(before["grad_norm"])
            ok = sum(1 for v in after["grad_norm"][:10] if v > 5 * base) >= 5
        elif fault.kind == "reward_collapse":
            ok = sum(1 for v in after["reward_std"] if v == 0.0) >= 10
        if not ok:
            problems.append(f"{series.name}: no {fault.kind} in the metrics after step {at}")
    # Nothing non-finite before the first fault (a healthy run: nowhere).
    first = series.fault_step or end
    for p in series.points:
        if p.step < first:
            for n in KEPT_FIELDS:
                v = getattr(p, n)
                if v is not None and not math.isfinite(v):
                    problems.append(f"{series.name}: {n} non-finite at step {p.step}")
    return problems


def _summary(series: Series) -> str:
    parts = []
    at = series.fault_step
    for name in ("loss", "grad_norm", "kl_divergence", "entropy", "reward_mean", "reward_std"):
        values = _values(series, name, 0, 10**9)
        if not values:
            continue
        if at is None:
            fin = _finite(values)
            parts.append(f"{name} {min(fin):.3g}..{max(fin):.3g}")
        else:
            pre = _finite(_values(series, name, at - 10, at))
            post = _values(series, name, at, 10**9)
            parts.append(
                f"{name} pre~{statistics.median(pre) if pre else math.nan:.3g} "
                f"post max {max(post):.3g} last {post[-1]:.3g}"
            )
    return f"{series.name} ({len(series.points)} pts): " + "; ".join(parts)


REJECTED_DIR = Path(tempfile.gettempdir()) / "detect-corpus-rejected"
app = command_app()


@app.command()
def _record(
    only: Annotated[
        list[str] | None, typer.Option(help="a series to record (repeat it; default: every one)")
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="list the series and exit")] = False,
    out: Annotated[Path, typer.Option(help="the corpus directory")] = CORPUS_DIR,
    rejected: Annotated[
        Path, typer.Option(help="where a series whose label check fails is written, for a look")
    ] = REJECTED_DIR,
    threads: Annotated[int, typer.Option(help="torch threads")] = 1,
) -> None:
    """Record the labelled corpus of training runs (exit 1 when a label check fails)."""
    if list_:
        for spec in SPECS:
            what = spec.injection.describe() if spec.injection else "healthy"
            print(f"{spec.name:28} {spec.algorithm:5} lr {spec.learning_rate:g}  {what}")
        return
    unknown = set(only or ()) - {s.name for s in SPECS}
    if unknown:
        raise bad_option("--only", f"unknown series {sorted(unknown)}")
    if record(only or [], out, rejected, threads):
        raise typer.Exit(1)


def record(only: list[str], out: Path, rejected: Path, threads: int) -> int:
    """Record the series named in ``only`` (every one when empty); 1 when a label check fails."""
    import torch

    from posttrain.trainer_agent.tiny import build_tiny_model

    torch.set_num_threads(threads)
    random.seed(0)
    specs = [s for s in SPECS if not only or s.name in only]
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="detect-corpus-") as tmp:
        work = Path(tmp)
        tiny = str(build_tiny_model(work / "models" / "tiny-llama"))
        # DPO and GRPO start from the demo's SFT model.
        base_series, base_model = run(SPECS[0], tiny, work)
        done = {SPECS[0].name: base_series}
        for spec in specs:
            started = time.perf_counter()
            series = done.get(spec.name)
            if series is None and spec.algorithm == "loop":
                series = run_loop(spec, work)
            elif series is None:
                model = tiny if spec.algorithm == "sft" else str(base_model)
                series, _ = run(spec, model, work)
            found = _check(series)
            problems += found
            save(series, rejected if found else out)
            took = time.perf_counter() - started
            print(f"[{took:5.1f}s] {_summary(series)}" + ("  LABEL FAILS" if found else ""))
            sys.stdout.flush()
    for problem in problems:
        print("label check failed:", problem)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    return run_app(app, argv, "python -m bench.record_detect_corpus")


if __name__ == "__main__":
    sys.exit(main())
