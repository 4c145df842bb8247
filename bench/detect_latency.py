"""Detection latency of the diagnostics stream under load, through the shipped path.

Load: ``--jobs`` training jobs (100: half SFT runs, half GRPO runs) step ``--rate``/jobs times a
second each (10,000 points/s in all) in ``--load-processes`` processes, and every step is
reported through
``create_training_callback`` with its shipped default options (the callback's own batching and
linger: no benchmark setting), routed to a pipeline stage like a stage under the agent. The
diagnostics stream (``python -m posttrain.diagnostics.stream``, a real Faust worker, started and
awaited through its /healthz) runs in its own process; this one reads posttrain.anomalies.

Injections: every ``--inject-every`` seconds one healthy job turns faulty, the kinds in turn:
a NaN loss (one step), a KL blow-up, an exploding gradient (20 steps), an entropy collapse, a
reward collapse (every sample with the same reward), a response-length blow-up (those four in
GRPO runs), a loss spike (3 steps, in an SFT run: an RL loss is not judged for spikes); and
``--plateau-jobs`` SFT jobs whose loss goes flat early enough for the plateau rule's window
(evaluations of 50 steps, patience 10) to close within the run. Latency of an injection:
from the emission of the point that completes the rule's evidence (the anomaly's step, as the
training loop logged it) to the AnomalyDetected read here; the figure includes the callback's
wait before it sends. An injection never detected counts as an infinite latency: one miss and
the p99 is infinite.

The load processes run at nice 10 (they stand for trainers on other machines); everything of the
platform runs at normal priority.

Actions: real torch training runs on a trainer agent (``posttrain.testing.training``, one step
every 0.5 s) turn NaN or get an exploding gradient at a known step, under the same load;
``action_p99_ms`` runs from the point's emission to the agent's ActionApplied (pause, or learning
rate x0.1), through the stream, the orchestrator (in this process) and the agent's next step
boundary. A run whose action is never applied counts as infinite.

Baseline, in the same run: the original design (scan stored metrics every 60 s, after a 30 s
buffer) detects the same injections at the first scan at least 30 s after emission (modelled
from the same emission times, not run).

    python -m bench.detect_latency [--jobs 100] [--rate 10000] [--duration 30]
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from bench.common import drop_namespace, fresh_namespace
from posttrain.events.kafka import EventConsumer, KafkaSettings
from posttrain.events.messages.diagnostics import AnomalyDetected
from posttrain.events.messages.stage import ActionApplied
from posttrain.events.topics import Topic
from posttrain.orchestrator.client import PipelineExecutor
from posttrain.orchestrator.shell.service import Orchestrator
from posttrain.service.commands import command_app, run_app
from posttrain.testing import services
from posttrain.testing.waiting import wait_until

ACTION_AT = 40  # the step at which the timed training runs turn NaN or spike
SEED_BUFFER_S = 30.0
SEED_SCAN_S = 60.0
WARM_S = 5.0  # the first injection: after every rule's warm-up window has filled
INF = math.inf


@dataclass(frozen=True)
class Fault:
    """How a fault changes a job's logged values from its onset, and what should catch it."""

    expected: frozenset[str]
    lasts: int | None  # steps; None: to the end of the run

    def apply(self, kind: str, fields: dict[str, Any]) -> None:
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
        elif kind == "plateau":
            pass  # the job's loss stops falling: see _healthy


FAULTS: dict[str, Fault] = {
    "nan": Fault(frozenset({"nan_inf"}), 1),
    "kl": Fault(frozenset({"kl_blowup", "kl_saturated"}), None),
    "grad": Fault(frozenset({"grad_explosion"}), 20),
    "entropy": Fault(frozenset({"entropy_collapse"}), None),
    "reward_collapse": Fault(frozenset({"reward_collapse"}), None),
    "length": Fault(frozenset({"length_explosion"}), None),
    "loss_spike": Fault(frozenset({"loss_spike"}), 3),
    "plateau": Fault(frozenset({"loss_plateau"}), None),
}
ROTATION = ("nan", "kl", "grad", "entropy", "reward_collapse", "length", "loss_spike")


def _healthy(rng: random.Random, step: int, flat_from: int | None, rl: bool) -> dict[str, Any]:
    """One step of a healthy run, in TRL's names: an SFT run (a falling loss, steady gradients)
    or a GRPO run (also rewards, KL, entropy and completion lengths), each value with its
    step-to-step noise."""
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


def is_rl(job: str) -> bool:
    """Half the jobs are GRPO runs, half SFT runs."""
    return int(job.rsplit("job", 1)[1]) % 2 == 1


# Which runs a fault can happen to: the RL signals exist only in RL runs, and a loss spike is
# judged only in runs whose loss is a supervised one (an RL loss jumps by design).
RL_ONLY = {"kl", "entropy", "reward_collapse", "length"}
SFT_ONLY = {"loss_spike"}


@dataclass(frozen=True)
class Planned:
    job: str
    kind: str
    at_s: float  # seconds after the load's start


def plan(jobs: list[str], duration: float, every: float, plateau_jobs: int) -> list[Planned]:
    rng = random.Random(1)
    free = list(jobs)
    rng.shuffle(free)
    sft = [j for j in free if not is_rl(j)]
    out = [Planned(job, "plateau", 2.0) for job in sft[:plateau_jobs]]
    free = [j for j in free if j not in {p.job for p in out}]
    t, k = WARM_S, 0
    # The last injection leaves time for the slowest rule (a collapse over ~10 steps) to see it.
    while t <= duration - 1.5:
        kind = ROTATION[k % len(ROTATION)]
        fits = [
            j
            for j in free
            if not (kind in RL_ONLY and not is_rl(j)) and not (kind in SFT_ONLY and is_rl(j))
        ]
        if not fits:
            break
        out.append(Planned(fits[0], kind, t))
        free.remove(fits[0])
        t += every
        k += 1
    return out


def _load(
    settings: KafkaSettings,
    jobs: list[str],
    pipeline_id: str,
    steps_per_s: float,
    duration: float,
    start_at: float,
    planned: list[Planned],
    spill_dir: str,
    out: Any,
) -> None:
    """One load process: its jobs' training loops, each reporting through the shipped callback.

    It runs at a lower priority (nice 10): its jobs stand for trainers on a hundred other
    machines, whose CPU is not the platform's to share; on this 2-core machine, at equal
    priority, they would take the stream's core (what the callback costs a trainer is
    bench.callback_overhead's figure)."""
    import os

    from posttrain.trainer_agent.reporting import create_training_callback

    os.nice(10)

    callbacks = {
        job: create_training_callback(
            job,
            pipeline_id=pipeline_id,
            stage=job,
            attempt=1,
            settings=settings,
            spill_dir=spill_dir,
        )
        for job in jobs
    }
    rngs = {job: random.Random(f"{job}") for job in jobs}
    pending = {p.job: p for p in planned}
    kinds = {p.job: p.kind for p in planned}
    rl = {job: is_rl(job) for job in jobs}
    onset: dict[str, int] = {}  # job -> the step its fault began
    injected: list[tuple[str, str, int, float]] = []
    tick_s = 1.0 / steps_per_s
    while time.time() < start_at:
        time.sleep(0.005)
    step = 0
    sent = 0
    while True:
        now = time.time()
        if now - start_at >= duration:
            break
        step += 1
        for job in jobs:
            p = pending.get(job)
            if p is not None and now - start_at >= p.at_s:
                del pending[job]
                onset[job] = step
                injected.append((job, p.kind, step, time.time()))
            kind = kinds[job] if job in onset else None
            flat_from = onset.get(job) if kind == "plateau" else None
            fields = _healthy(rngs[job], step, flat_from, rl[job])
            if kind is not None:
                fault = FAULTS[kind]
                since = step - onset[job]
                if fault.lasts is None or since < fault.lasts:
                    fault.apply(kind, fields)
            callbacks[job](step=step, **fields)
            sent += 1
        delay = start_at + step * tick_s - time.time()
        if delay > 0:
            time.sleep(delay)
    elapsed = time.time() - start_at
    for callback in callbacks.values():
        callback.close(timeout=30)
    out.put((injected, sent, elapsed))


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def _ms(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1f}"


async def _actions_pipeline(settings: KafkaSettings, pipeline_id: str, stages: int) -> None:
    entry = "posttrain.testing.training:run"

    def stage(name: str, **kwargs: Any) -> dict[str, Any]:
        config = {"entrypoint": entry, "kwargs": {"step_s": 0.5, **kwargs}}
        return {"name": name, "task": "python", "params": {"config": config}}

    await PipelineExecutor(pipeline_id, settings=settings).aexecute(
        [stage(f"nan_{i}", nan_at=ACTION_AT, steps=ACTION_AT + 60) for i in range(stages)]
        + [stage(f"spike_{i}", spike_at=ACTION_AT, steps=ACTION_AT + 40) for i in range(stages)]
    )


@dataclass(frozen=True)
class Shape:
    """The load (``jobs`` jobs, ``rate`` points a second in all, for ``duration`` seconds from
    ``load_processes`` processes, a fault every ``inject_every`` seconds, ``plateau_jobs`` of
    them plateaus, ``drain`` seconds after it) and the ``action_stages`` timed runs of each
    kind."""

    jobs: int
    rate: int
    duration: float
    inject_every: float
    plateau_jobs: int
    load_processes: int
    drain: float
    action_stages: int


async def main(shape: Shape) -> None:
    settings = await fresh_namespace("detect")
    scratch = Path(tempfile.mkdtemp(prefix="detect-latency-"))
    stream = services.diagnostics(
        settings, scratch / "diagnostics.log", env={"LOG_LEVEL": "WARNING"}
    )
    agent = services.agent(
        settings,
        scratch / "agent.log",
        name="bench-agent",
        work_dir=scratch / "agent",
        slots=2 * shape.action_stages,
    )
    stream.start()
    agent.start()
    stop_orchestrator = asyncio.Event()
    orchestrator = Orchestrator(settings, tick_interval_s=0.2, session_timeout_ms=2000)
    await orchestrator.start()
    orchestrating = asyncio.create_task(orchestrator.run(stop_orchestrator))
    actions_pipeline = f"bench-actions-{settings.namespace}"
    load_pipeline = f"bench-load-{settings.namespace}"
    jobs = [f"{load_pipeline}.job{j:03d}" for j in range(shape.jobs)]
    planned = plan(jobs, shape.duration, shape.inject_every, shape.plateau_jobs)
    results: list[Any] = []
    detected: dict[str, list[tuple[AnomalyDetected, float]]] = defaultdict(list)
    emitted_at: dict[str, float] = {}  # action runs: job -> when its anomalous point was logged
    applied_at: dict[str, float] = {}  # action runs: job -> when the agent applied the action
    try:
        await asyncio.gather(stream.wait_ready(), agent.wait_ready())
        await wait_until(
            lambda: orchestrator.stats.assigned,
            timeout=60,
            interval=0.05,
            what="the orchestrator's partitions",
        )
        async with EventConsumer(
            settings,
            [Topic.ANOMALIES, Topic.STAGE_REPORTS],
            group_id=None,
            name="bench-detect",
            auto_offset_reset="latest",
        ) as consumer:
            await _actions_pipeline(settings, actions_pipeline, shape.action_stages)
            queue: Any = mp.get_context("spawn").Queue()
            start_at = time.time() + 3.0  # every load process builds its callbacks first
            shares = [jobs[i :: shape.load_processes] for i in range(shape.load_processes)]
            steps_per_s = shape.rate / shape.jobs
            loads = [
                mp.get_context("spawn").Process(
                    target=_load,
                    args=(
                        settings,
                        share,
                        load_pipeline,
                        steps_per_s,
                        shape.duration,
                        start_at,
                        [p for p in planned if p.job in set(share)],
                        str(scratch / "spill"),
                        queue,
                    ),
                )
                for share in shares
            ]
            for load in loads:
                load.start()
            drain_until: float | None = None
            while True:
                for r in await consumer.getmany(timeout_ms=100, max_records=5000):
                    now = time.time()
                    data = r.envelope.data
                    if isinstance(data, AnomalyDetected):
                        detected[data.job_id].append((data, now))
                        ours = data.job_id.startswith(actions_pipeline)
                        if ours and data.step >= ACTION_AT and data.emitted_at is not None:
                            emitted_at.setdefault(data.job_id, data.emitted_at)
                    elif isinstance(data, ActionApplied) and data.action in (
                        "pause",
                        "adjust_learning_rate",
                    ):
                        applied_at.setdefault(data.job_id, now)
                while not queue.empty():
                    results.append(queue.get())
                if len(results) == len(loads) and drain_until is None:
                    drain_until = time.time() + shape.drain
                if drain_until is not None:
                    injected = [i for res in results for i in res[0]]
                    caught = all(_match(detected, i) is not None for i in injected)
                    actions_done = len(applied_at) >= 2 * shape.action_stages
                    if (caught and actions_done) or time.time() > drain_until:
                        break
            for load in loads:
                load.join(30)
    finally:
        stop_orchestrator.set()
        await orchestrating
        await orchestrator.stop()
        services.stop_all([stream, agent])
        await drop_namespace(settings)

    injected = [i for res in results for i in res[0]]
    sent = sum(res[1] for res in results)
    elapsed = max(res[2] for res in results)
    by_kind: dict[str, list[float]] = defaultdict(list)
    lag_steps: dict[str, list[int]] = defaultdict(list)
    for job, kind, step, _t in injected:
        match = _match(detected, (job, kind, step, _t))
        if match is None:
            by_kind[kind].append(INF)
            continue
        anomaly, read_at = match
        assert anomaly.emitted_at is not None
        by_kind[kind].append((read_at - anomaly.emitted_at) * 1000)
        lag_steps[kind].append(anomaly.step - step)
    faulty = {job for job, *_ in injected}
    false = Counter(
        a.anomaly_type
        for job, found in detected.items()
        if job.startswith(load_pipeline) and job not in faulty
        for a, _ in found
    )
    print(
        f"load: {sent:,} points over {shape.jobs} jobs in {elapsed:.1f} s "
        f"({sent / elapsed:,.0f} points/s) through create_training_callback (default options), "
        f"{shape.load_processes} load processes"
    )
    for kind in [*ROTATION, "plateau"]:
        values = by_kind.get(kind, [])
        if not values:
            continue
        steps = lag_steps.get(kind) or [0]
        print(
            f"  {kind:16s} injected {len(values):3d}  missed {sum(map(math.isinf, values)):2d}  "
            f"p50_ms {_ms(sorted(values)[len(values) // 2]):>8s}  p99_ms {_ms(p99(values)):>8s}  "
            f"(evidence complete {max(steps)} steps after onset at most)"
        )
    print(f"anomalies on healthy jobs: {sum(false.values())} {dict(false)}")
    everything = [v for values in by_kind.values() for v in values]
    missed = sum(map(math.isinf, everything))
    print(f"missed: {missed}")
    action_ms = [
        (applied_at[j] - t) * 1000 if j in applied_at else INF for j, t in emitted_at.items()
    ]
    action_ms += [INF] * (2 * shape.action_stages - len(action_ms))
    print(
        f"action_p99_ms: {_ms(p99(action_ms))}  (emitted -> applied by the agent at its next "
        f"step boundary, 0.5 s steps; {sum(map(math.isfinite, action_ms))} of "
        f"{2 * shape.action_stages} runs: NaN -> pause, exploding gradient -> LR x0.1)"
    )
    seed_ms = []
    for _job, _kind, _step, t in injected:
        ready = t - (time.time() - elapsed) + SEED_BUFFER_S
        seed_ms.append(
            (math.ceil(ready / SEED_SCAN_S) * SEED_SCAN_S - ready + SEED_BUFFER_S) * 1000
        )
    if everything:
        print(f"seed_design_detect_p99_ms: {p99(seed_ms):.0f}  (modelled: 60 s scans, 30 s buffer)")
        print(f"ratio_vs_seed_design: {p99(seed_ms) / p99(everything):.1f}")
        print(f"detect_p99_ms: {_ms(p99(everything))}")
    else:
        print("detect_p99_ms: inf (nothing was injected)")


def _match(
    detected: dict[str, list[tuple[AnomalyDetected, float]]], injection: tuple[str, str, int, float]
) -> tuple[AnomalyDetected, float] | None:
    """The first anomaly of an expected type on the injected job at or after the onset."""
    job, kind, step, _t = injection
    expected = FAULTS[kind].expected
    for anomaly, read_at in detected.get(job, ()):
        if anomaly.anomaly_type in expected and anomaly.step >= step:
            return anomaly, read_at
    return None


app = command_app()


@app.command()
def _bench(
    jobs: Annotated[int, typer.Option(help="jobs the load spreads over")] = 100,
    rate: Annotated[int, typer.Option(help="points per second in all")] = 10_000,
    duration: Annotated[float, typer.Option(help="seconds of load")] = 30.0,
    inject_every: Annotated[float, typer.Option(help="seconds between faults")] = 0.5,
    plateau_jobs: Annotated[int, typer.Option(help="jobs whose loss plateaus")] = 2,
    load_processes: Annotated[int, typer.Option(help="processes sending the load")] = 2,
    drain: Annotated[float, typer.Option(help="seconds to wait after the load")] = 30.0,
    action_stages: Annotated[
        int,
        typer.Option(
            help="training runs of each kind (NaN, exploding gradient) whose actions are timed"
        ),
    ] = 2,
) -> None:
    """From a fault in a metric to its anomaly, and to the action applied to its stage."""
    shape = Shape(
        jobs, rate, duration, inject_every, plateau_jobs, load_processes, drain, action_stages
    )
    asyncio.run(main(shape))


if __name__ == "__main__":
    sys.exit(run_app(app, None, "python -m bench.detect_latency"))
