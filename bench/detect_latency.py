"""Detection latency of the diagnostics stream under load.

A load process emits 10,000 metric points/s over 100 jobs onto posttrain.metrics: each job
steps 100 times a second and, like the project's training callback, sends what it logged every
``--report-every`` seconds (0.2 s: the callback's linger at about 1% step overhead; its default
of 1 s alone would spend the whole detection budget) as one MetricsReported. Each point is
stamped with its own step time, so the figures include the wait in the callback's batch. Every
``--inject-every`` seconds one job's point at a random place in its next batch has a NaN loss.
The diagnostics stream (``python -m posttrain.diagnostics.stream``, a real Faust worker) runs
in its own process; this process reads posttrain.anomalies and posttrain.pipeline.commands.

Figures, for the injected anomalies only:
- detect: the point's emission time (its timestamp: when the step logged it) ->
  AnomalyDetected read here;
- request: the same -> the RequestAction(pause) read on posttrain.pipeline.commands;
- action: real torch training runs on a trainer agent (``posttrain.testing.training``, one
  step every 0.5 s) turn NaN or get a gradient spike at a known step, under the same load; the
  point's emission time -> the agent's ActionApplied (pause, or learning rate x0.1), through
  the stream, the orchestrator (in this process) and the agent's next step boundary.
Baseline, in the same run: the original design (scan stored metrics every 60 s, after a 30 s
buffer) detects the same injections at the first scan at least 30 s after emission; its
latency is computed from the same injection times (modelled, not run).

    python -m bench.detect_latency [--jobs 100] [--rate 10000] [--duration 20]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson

from bench.common import drop_namespace, fresh_namespace
from posttrain.events import Envelope
from posttrain.events.kafka import EventConsumer, EventProducer, KafkaSettings
from posttrain.events.messages.diagnostics import AnomalyDetected
from posttrain.events.messages.metrics import MetricPoint, MetricsReported
from posttrain.events.messages.pipeline import RequestAction
from posttrain.events.messages.stage import ActionApplied
from posttrain.events.topics import Topic
from posttrain.orchestrator.api import PipelineExecutor
from posttrain.orchestrator.shell.service import Orchestrator

ACTION_AT = 40  # the step at which the timed training runs turn NaN or spike
SEED_BUFFER_S = 30.0
SEED_SCAN_S = 60.0


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


_HEADERS = [
    ("posttrain-type", MetricsReported.TYPE.encode()),
    ("posttrain-version", str(MetricsReported.VERSION).encode()),
    ("content-type", b"application/json"),
]


def _encode(job: str, first_seq: int, points: list[dict[str, object]], j: int):
    """The codec's bytes for a MetricsReported, written directly: the load process must not be
    what slows the machine down (pydantic would cost it several times more CPU)."""
    value = orjson.dumps(
        {
            "id": uuid.uuid4().hex,
            "type": MetricsReported.TYPE,
            "version": MetricsReported.VERSION,
            "occurred_at": datetime.now(UTC).isoformat(),
            "key": job,
            "correlation_id": None,
            "causation_id": None,
            "data": {
                "job_id": job,
                "source": "bench",
                "first_seq": first_seq,
                "points": points,
                "pipeline_id": f"bench-pipeline-{j}",
                "stage": "train",
                "attempt": 1,
            },
        }
    )
    return job.encode(), value, _HEADERS


async def _load(
    settings: KafkaSettings,
    jobs: int,
    rate: int,
    duration: float,
    inject_every: float,
    tick_s: float,
    out: mp.Queue,
) -> None:
    rng = random.Random(0)
    per_tick = max(1, round(rate * tick_s / jobs))
    steps = dict.fromkeys(range(jobs), 0)
    seqs = dict.fromkeys(range(jobs), 0)
    injected: list[tuple[str, int, float]] = []
    async with EventProducer(settings, linger_ms=2) as producer:
        start = time.time()
        next_inject = start + 3.0  # after the stream's windows are warm
        tick = 0
        sent_points = 0
        while True:
            now = time.time()
            if now - start >= duration:
                break
            inject_job = None
            if now >= next_inject:
                inject_job = rng.randrange(jobs)
                next_inject += inject_every
            encoded = []
            for j in range(jobs):
                job = f"bench-job-{j}"
                sent_at = time.time()
                points = []
                for i in range(per_tick):
                    steps[j] += 1
                    step = steps[j]
                    points.append(
                        {
                            "step": step,
                            # Logged during the last tick, one step every tick_s / per_tick.
                            "timestamp": sent_at - tick_s + (i + 1) * tick_s / per_tick,
                            "loss": 2.0 + 0.05 * math.sin(step / 7) + rng.gauss(0, 0.01),
                            "grad_norm": 1.0 + rng.gauss(0, 0.05),
                            "learning_rate": 1e-5,
                            "reward_mean": 0.5 + rng.gauss(0, 0.02),
                            "kl_divergence": 0.02 + abs(rng.gauss(0, 0.002)),
                        }
                    )
                if j == inject_job:
                    bad = points[rng.randrange(per_tick)]
                    bad["loss"] = "NaN"  # the codec's spelling of a NaN
                    injected.append((job, bad["step"], bad["timestamp"]))
                encoded.append(_encode(job, seqs[j], points, j))
                seqs[j] += per_tick
            await producer.send_encoded(Topic.METRICS, encoded)
            sent_points += per_tick * jobs
            tick += 1
            delay = start + tick * tick_s - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
        elapsed = time.time() - start
    out.put((injected, sent_points, elapsed, start))


def _load_process(settings: KafkaSettings, *args: object) -> None:
    asyncio.run(_load(settings, *args))  # type: ignore[arg-type]


async def _wait_ready(settings: KafkaSettings, consumer: EventConsumer, timeout: float) -> None:
    """Send a NaN on a warm-up job until the stream answers: the worker is up and assigned."""
    async with EventProducer(settings, linger_ms=0) as producer:
        deadline = time.time() + timeout
        step = 0
        while time.time() < deadline:
            step += 2
            points = [
                MetricPoint(step=step - 1, timestamp=time.time(), loss=1.0),
                MetricPoint(step=step, timestamp=time.time(), loss=math.nan),
            ]
            report = MetricsReported(job_id="warmup", source="w", first_seq=step, points=points)
            await producer.send(Topic.METRICS, Envelope.create(report, key="warmup"))
            for r in await consumer.getmany(timeout_ms=1000):
                if isinstance(r.envelope.data, AnomalyDetected):
                    return
        raise SystemExit("the diagnostics stream did not answer within the start-up timeout")


def _start_stream(
    env: dict[str, str], log_path: Path, command: list[str] | None = None
) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command or [sys.executable, "-m", "posttrain.diagnostics.stream"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _stop_stream(stream: subprocess.Popen[bytes]) -> None:
    stream.send_signal(signal.SIGTERM)
    try:
        stream.wait(30)
    except subprocess.TimeoutExpired:
        stream.kill()


async def main(args: argparse.Namespace) -> None:
    settings = await fresh_namespace("detect")
    log_path = Path(tempfile.gettempdir()) / f"detect-latency-{settings.namespace}.log"
    env = dict(
        os.environ,
        KAFKA_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
        POSTTRAIN_TOPIC_NAMESPACE=settings.namespace,
        LOG_LEVEL="WARNING",
    )
    stream = _start_stream(env, log_path, args.stream_command.split() or None)
    # The action path: real training stages on a trainer agent, the orchestrator between.
    agent_dir = Path(tempfile.mkdtemp(prefix="detect-latency-agent-"))
    agent = subprocess.Popen(  # noqa: ASYNC220 (once, before anything is timed)
        [
            str(Path(sys.executable).parent / "posttrain-agent"),
            "--name",
            "bench-agent",
            "--gpus",
            "0",
            "--slots",
            str(2 * args.action_stages),
            "--work-dir",
            str(agent_dir),
        ],
        env=env,
        stdout=(agent_dir / "agent.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stop_orchestrator = asyncio.Event()
    orchestrator = Orchestrator(settings, tick_interval_s=0.2, session_timeout_ms=2000)
    await orchestrator.start()
    orchestrating = asyncio.create_task(orchestrator.run(stop_orchestrator))
    pipeline_id = f"bench-{settings.namespace}"
    entry = "posttrain.testing.training:run"
    await PipelineExecutor(pipeline_id, settings=settings).aexecute(
        [
            {
                "name": f"nan_{i}",
                "task": "python",
                "params": {
                    "config": {
                        "entrypoint": entry,
                        "kwargs": {"nan_at": ACTION_AT, "step_s": 0.5, "steps": ACTION_AT + 60},
                    }
                },
            }
            for i in range(args.action_stages)
        ]
        + [
            {
                "name": f"spike_{i}",
                "task": "python",
                "params": {
                    "config": {
                        "entrypoint": entry,
                        "kwargs": {"spike_at": ACTION_AT, "step_s": 0.5, "steps": ACTION_AT + 20},
                    }
                },
            }
            for i in range(args.action_stages)
        ]
    )
    emitted_at: dict[str, float] = {}  # job -> when its anomalous point was measured
    applied_at: dict[str, float] = {}  # job -> when the agent reported the action applied
    try:
        async with EventConsumer(
            settings,
            [Topic.ANOMALIES, Topic.PIPELINE_COMMANDS, Topic.STAGE_REPORTS],
            group_id=None,
            name="bench-detect",
            auto_offset_reset="latest",
        ) as consumer:
            await _wait_ready(settings, consumer, timeout=120)
            queue: mp.Queue = mp.Queue()
            load = mp.Process(
                target=_load_process,
                args=(
                    settings,
                    args.jobs,
                    args.rate,
                    args.duration,
                    args.inject_every,
                    args.report_every,
                    queue,
                ),
            )
            load.start()
            detected: dict[tuple[str, int], float] = {}
            produced: dict[tuple[str, int], float] = {}
            requested: dict[str, float] = {}
            anomaly_key: dict[str, tuple[str, int]] = {}
            result = None
            drain_until = None
            while True:
                for r in await consumer.getmany(timeout_ms=100, max_records=5000):
                    now = time.time()
                    data = r.envelope.data
                    if isinstance(data, AnomalyDetected) and data.job_id.startswith(pipeline_id):
                        if data.step == ACTION_AT and data.emitted_at is not None:
                            emitted_at.setdefault(data.job_id, data.emitted_at)
                    elif isinstance(data, ActionApplied) and data.action in (
                        "pause",
                        "adjust_learning_rate",
                    ):
                        applied_at.setdefault(data.job_id, now)
                    if isinstance(data, AnomalyDetected) and data.anomaly_type == "nan_inf":
                        detected.setdefault((data.job_id, data.step), now)
                        produced.setdefault((data.job_id, data.step), r.timestamp_ms / 1000)
                        anomaly_key[data.anomaly_id] = (data.job_id, data.step)
                    elif isinstance(data, RequestAction) and data.anomaly_id:
                        requested.setdefault(data.anomaly_id, now)
                if result is None and not queue.empty():
                    result = queue.get()
                    drain_until = time.time() + 60.0
                if result is not None:
                    injected = result[0]
                    actions_done = len(applied_at) >= 2 * args.action_stages
                    if (
                        all((job, step) in detected for job, step, _ in injected) and actions_done
                    ) or (drain_until is not None and time.time() > drain_until):
                        break
            load.join()
    finally:
        stop_orchestrator.set()
        await orchestrating
        await orchestrator.stop()
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGTERM)
            agent.wait(timeout=30)
        _stop_stream(stream)
        await drop_namespace(settings)

    injected, sent_points, elapsed, load_start = result
    emitted = {(job, step): t for job, step, t in injected}
    detect_ms = [(detected[k] - t) * 1000 for k, t in emitted.items() if k in detected]
    request_ms = [
        (requested[aid] - emitted[key]) * 1000
        for aid, key in anomaly_key.items()
        if key in emitted and aid in requested
    ]
    seed_ms = []
    for t in emitted.values():
        ready = t - load_start + SEED_BUFFER_S
        seed_ms.append(
            (math.ceil(ready / SEED_SCAN_S) * SEED_SCAN_S - ready + SEED_BUFFER_S) * 1000
        )
    print(
        f"load: {sent_points} points over {args.jobs} jobs in {elapsed:.1f} s "
        f"({sent_points / elapsed:,.0f} points/s)"
    )
    print(
        f"injected: {len(emitted)}, detected: {len(detect_ms)}, "
        f"action requests read: {len(request_ms)}"
    )
    if request_ms:
        print(
            f"request_p99_ms: {p99(request_ms):.1f}  (emitted -> RequestAction on "
            "posttrain.pipeline.commands)"
        )
    action_ms = [(applied_at[j] - t) * 1000 for j, t in emitted_at.items() if j in applied_at]
    if action_ms:
        print(
            f"action_p99_ms: {p99(action_ms):.1f}  (emitted -> applied by the agent at its next "
            f"step boundary, 0.5 s steps; {len(action_ms)} of {2 * args.action_stages} runs: "
            "NaN -> pause, gradient spike -> LR x0.1)"
        )
    else:
        print("action_p99_ms: nan (no action was applied: see the agent's log)")
    if detect_ms:
        print(f"detect_p50_ms: {sorted(detect_ms)[len(detect_ms) // 2]:.1f}")
        print(
            f"seed_design_detect_p99_ms: {p99(seed_ms):.0f}  (modelled: 60 s scans after a "
            "30 s buffer)"
        )
        print(f"ratio_vs_seed_design: {p99(seed_ms) / p99(detect_ms):.0f}")
    if len(detect_ms) < len(emitted):
        print(f"missed: {len(emitted) - len(detect_ms)} injected anomalies never detected")
    if args.verbose:
        for (job, step), t in sorted(emitted.items(), key=lambda kv: kv[1]):
            late = detected.get((job, step))
            print(
                f"  +{t - load_start:5.1f} s {job} step {step}: "
                + (
                    f"{(late - t) * 1000:.0f} ms (written by the stream after "
                    f"{(produced[(job, step)] - t) * 1000:.0f} ms)"
                    if late
                    else "missed"
                )
            )
    print(f"detect_p99_ms: {p99(detect_ms):.1f}" if detect_ms else "detect_p99_ms: nan")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--rate", type=int, default=10_000, help="points per second in all")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--inject-every", type=float, default=0.5, help="seconds")
    parser.add_argument(
        "--report-every", type=float, default=0.2, help="the callback's send interval, seconds"
    )
    parser.add_argument("--verbose", action="store_true", help="each injection's latency")
    parser.add_argument(
        "--action-stages",
        type=int,
        default=2,
        help="training runs of each kind (NaN, gradient spike) whose actions are timed",
    )
    parser.add_argument(
        "--stream-command", default="", help="run the stream this way (e.g. under a profiler)"
    )
    asyncio.run(main(parser.parse_args()))
