"""CPU cost of JobState.observe per point, this tree against a git revision, in one process.

The revision's ``posttrain.diagnostics.core`` is loaded beside this tree's (from ``git archive``),
and both fold the same series in turn: a healthy GRPO-like and SFT-like run in TRL's names
mapped to canonical fields (bench.detect_latency's ``_healthy``), as pydantic models and as the
msgspec views the stream decodes. Each figure is the median over ``--repeat`` folds of
``--steps`` points, in microseconds per point; runs alternate so that other load on the machine
falls on both.

    python -m bench.detect_fold_speed [--against main] [--steps 2000] [--repeat 9]
"""

from __future__ import annotations

import importlib.util
import io
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer

from bench.detect_latency import _healthy
from posttrain.events.codec import encode
from posttrain.events.envelope import Envelope
from posttrain.events.messages.metrics import MetricPoint, MetricsReported
from posttrain.events.views import ViewDecoder
from posttrain.service.commands import command_app, run_app

CORE = "posttrain.diagnostics.core"
CORE_DIR = "services/diagnostics/posttrain/diagnostics/core"
_TRL = {
    "reward": "reward_mean",
    "kl": "kl_divergence",
    "completions/mean_length": "response_length_mean",
}


def load_core_at(rev: str) -> ModuleType:
    """``posttrain.diagnostics.core`` as it is at ``rev``, as a separate module tree."""
    root = Path(subprocess.check_output(["git", "rev-parse", "--show-toplevel"], text=True).strip())
    data = subprocess.check_output(["git", "-C", str(root), "archive", rev, CORE_DIR])
    tmp = Path(tempfile.mkdtemp(prefix="core-"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tmp, filter="data")
    path = tmp / CORE_DIR
    import posttrain.diagnostics.core  # noqa: F401  (this tree's, imported first)

    current = {k: v for k, v in sys.modules.items() if k == CORE or k.startswith(CORE + ".")}
    for k in current:
        del sys.modules[k]
    try:
        spec = importlib.util.spec_from_file_location(
            CORE, path / "__init__.py", submodule_search_locations=[str(path)]
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[CORE] = module
        spec.loader.exec_module(module)
    finally:
        for k in [k for k in sys.modules if k == CORE or k.startswith(CORE + ".")]:
            del sys.modules[k]
        sys.modules.update(current)
    return module


def run(rl: bool, steps: int, seed: int = 3) -> list[MetricPoint]:
    rng = random.Random(seed)
    points = []
    for step in range(1, steps + 1):
        canonical: dict[str, Any] = {}
        custom: dict[str, Any] = {}
        for key, value in _healthy(rng, step, None, rl).items():
            name = _TRL.get(key, key)
            (canonical if name in MetricPoint.model_fields else custom)[name] = value
        points.append(MetricPoint(step=step, timestamp=float(step), custom=custom, **canonical))
    return points


def views(points: Sequence[MetricPoint]) -> list[Any]:
    decoder = ViewDecoder()
    out: list[Any] = []
    for i in range(0, len(points), 100):
        batch = list(points[i : i + 100])
        message = MetricsReported(job_id="j", source="s", first_seq=i, points=batch)
        _, value, headers = encode(Envelope.create(message, key="j"))
        out.extend(decoder.decode(value, headers).data.points)
    return out


def fold_us(core: ModuleType, points: Sequence[Any]) -> float:
    state = core.JobState(core.DetectorConfig())
    observe = state.observe
    start = time.process_time()
    for i, p in enumerate(points):
        observe(p, source="s", seq=i)
    return (time.process_time() - start) / len(points) * 1e6


app = command_app()


@app.command()
def _bench(
    against: Annotated[str, typer.Option(help="the git revision whose core is the baseline")] = (
        "main"
    ),
    steps: Annotated[int, typer.Option(help="points in each synthetic run")] = 2000,
    repeat: Annotated[int, typer.Option(help="timed folds of each; the median counts")] = 9,
) -> None:
    """The detectors' fold, microseconds per point, this tree against a git revision."""
    import posttrain.diagnostics.core as this

    cores = {against: load_core_at(against), "this tree": this}
    for rl in (True, False):
        models = run(rl, steps)
        for form, points in (("models", models), ("views", views(models))):
            times: dict[str, list[float]] = {name: [] for name in cores}
            for _ in range(repeat):
                for name, core in cores.items():
                    times[name].append(fold_us(core, points))
            med = {name: statistics.median(t) for name, t in times.items()}
            base, new = med[against], med["this tree"]
            print(
                f"{'grpo' if rl else 'sft ':4s} {form:6s}  {against}: {base:6.2f} us/point  "
                f"this tree: {new:6.2f} us/point  x{base / new:.2f}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, "python -m bench.detect_fold_speed")


if __name__ == "__main__":
    sys.exit(main())
