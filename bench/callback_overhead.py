"""What the training callback costs a training step.

A tiny Llama (hidden 64, 2 layers, the agent's character tokenizer) trains on the addition data
with a plain torch loop (one torch thread), reporting 20 fields per step through
``create_training_callback`` at its shipped defaults to the real broker (a throwaway namespace).

The figure is measured in CPU time, because wall-clock time on a shared machine moves by
several percent with other people's load while the callback costs a fraction of one:

    overhead = (the call's CPU on the training thread
                + every other thread's CPU per reported step) / training CPU per step

- The call's CPU: timed around each call in the training loop itself, so that it pays the cold
  caches a call meets after a training step. Building the dict of values is the loop's own
  work, which any logger needs: timed apart, printed, and not counted.
- Every other thread's CPU: the process's CPU less the training thread's, over a run of steps
  that all report, as a user's do, until every point is acknowledged. It counts the sender
  thread's whole work (mapping names, batching, encoding) and the Kafka client's threads, as if
  all of it ran serially with training: an upper bound (the client's threads do not even take
  the interpreter lock).

Blocks of steps with and without the callback, alternating, give the wall-clock comparison,
printed with its bootstrap interval; and the call is timed in a tight loop. All points are
flushed and counted at the end.

    python -m bench.callback_overhead [--reported-steps 1200] [--blocks 60] [--steps-per-block 20]
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from bench.common import drop_namespace, fresh_namespace
from posttrain.events.topics import Topic
from posttrain.service.commands import command_app, run_app

DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "addition_train.jsonl"


def _batches(tokenizer: Any, batch_size: int) -> list[Any]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    texts = [r["prompt"] + r["completion"] + tokenizer.eos_token for r in rows]
    encoded = tokenizer(texts, return_tensors="pt", padding=True)
    ids = encoded["input_ids"]
    labels = ids.masked_fill(encoded["attention_mask"] == 0, -100)
    out = []
    for start in range(0, len(texts) - batch_size + 1, batch_size):
        out.append((ids[start : start + batch_size], labels[start : start + batch_size]))
    return out or [(ids, labels)]


def _fields(step: int, loss: Any, grad_norm: Any) -> dict[str, Any]:
    """18 metrics which, with step and epoch, make 20 fields: canonical, seed and custom."""
    return {
        "loss": loss,
        "policy_loss": loss,
        "value_loss": 0.5,
        "learning_rate": 1e-3,
        "grad_norm_actor": grad_norm,
        "reward_mean": 0.5,
        "reward_std": 0.1,
        "kl_divergence": 0.01,
        "entropy": 1.2,
        "response_length_mean": 3.0,
        "clip_frac": 0.05,
        "tokens_per_second": 5000.0,
        "gpu_memory_allocated_gib": 0.0,
        "throughput_samples_per_sec": 100.0,
        "frac_reward_zero_std": 0.2,
        "num_tokens": step * 512,
        "timing_s/gen": 0.01,
        "timing_s/update": 0.02,
    }


app = command_app()


@app.command()
def _bench(
    blocks: Annotated[int, typer.Option(help="timed blocks, the variants interleaved")] = 60,
    steps_per_block: Annotated[int, typer.Option(help="training steps in a block")] = 20,
    batch_size: Annotated[int, typer.Option(help="the training batch")] = 32,
    reported_steps: Annotated[int, typer.Option(help="steps reported through Kafka")] = 1200,
    threads: Annotated[int, typer.Option(help="torch threads")] = 1,
) -> None:
    """What the training callback costs a training step, against no callback."""

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.trainer_agent.reporting import create_training_callback
    from posttrain.trainer_agent.tiny import build_tiny_model

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    scratch = Path(tempfile.mkdtemp(prefix="bench-callback-"))
    model_dir = build_tiny_model(scratch / "tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = _batches(tokenizer, batch_size)
    settings = asyncio.run(fresh_namespace("callback", [Topic.METRICS]))
    # The shipped defaults: no benchmark tunes the reporter.
    report = create_training_callback("bench-job", settings=settings, spill_dir=scratch / "spill")
    step = 0
    call_cpu: list[float] = []  # the call's own CPU, per reported step
    build_cpu: list[float] = []  # the loop's building of the values it reports

    def train_step(with_callback: bool) -> tuple[float, float]:
        nonlocal step
        wall, cpu = time.perf_counter(), time.thread_time()
        ids, labels = batches[step % len(batches)]
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        if with_callback:
            before = time.thread_time()
            values = _fields(step, loss.detach(), grad_norm)  # the loop's own work
            built = time.thread_time()
            report(step=step, epoch=step / 100, **values)
            build_cpu.append(built - before)
            call_cpu.append(time.thread_time() - built)
        return time.perf_counter() - wall, time.thread_time() - cpu

    for _ in range(30):  # warm-up: allocator, kernels, the producer's connection
        train_step(True)
    report.flush(30)
    call_cpu.clear()
    build_cpu.clear()

    # The other threads' work while every step reports, as in a user's run.
    others_before = time.process_time() - time.thread_time()
    for _ in range(reported_steps):
        train_step(True)
    report.flush(60)  # the sender's work for these steps, all of it
    others_cpu = time.process_time() - time.thread_time() - others_before
    call = statistics.fmean(call_cpu)
    build = statistics.fmean(build_cpu)

    wall = {False: [], True: []}  # type: dict[bool, list[float]]
    cpu = {False: [], True: []}  # type: dict[bool, list[float]]
    pairs: list[tuple[float, float]] = []  # wall time (without, with) per block pair
    for block in range(blocks):
        # Alternate which variant goes first, so that drift hits both alike.
        order = (False, True) if block % 2 == 0 else (True, False)
        sums = {}
        for variant in order:
            times = [train_step(variant) for _ in range(steps_per_block)]
            wall[variant].extend(t[0] for t in times)
            cpu[variant].extend(t[1] for t in times)
            sums[variant] = sum(t[0] for t in times)
        pairs.append((sums[False], sums[True]))
    report.flush(60)

    # The call itself, in a tight loop: what the training thread pays per step.
    calls = 10_000
    started = time.perf_counter()
    for i in range(calls):
        report(step=step + i, epoch=0.0, **_fields(i, 1.0, 1.0))
    per_call_us = (time.perf_counter() - started) / calls * 1e6
    delivered = report.flush(120)
    stats = report.stats()
    report.close()
    asyncio.run(drop_namespace(settings))

    step_cpu = statistics.median(cpu[False])
    others_per_step = others_cpu / reported_steps
    overhead = (call + others_per_step) / step_cpu * 100
    low, high = _interval(pairs, _overhead)
    print(
        f"steps: {reported_steps} all reported, then blocks of {steps_per_block}: "
        f"{len(cpu[False])} without, {len(cpu[True])} with (20 fields/step)"
    )
    print(f"training thread CPU per step without the callback (median): {step_cpu * 1e3:.3f} ms")
    print(f"the call's CPU on the training thread (mean): {call * 1e6:.1f} us")
    print(
        f"the loop's building of the 18 values it reports (mean, not counted): "
        f"{build * 1e6:.1f} us; counted, the overhead would be "
        f"{(build + call + others_per_step) / step_cpu * 100:.3f} %"
    )
    print(
        f"other threads' CPU per reported step (sender and Kafka client): "
        f"{others_per_step * 1e6:.1f} us"
    )
    print(
        f"wall time per step (median): {statistics.median(wall[False]) * 1e3:.3f} ms without, "
        f"{statistics.median(wall[True]) * 1e3:.3f} ms with"
    )
    print(
        f"wall-clock overhead: {_overhead(pairs):.2f} % "
        f"(95% bootstrap interval [{low:.2f}, {high:.2f}]: other processes' load)"
    )
    print(f"callback call in a tight loop: {per_call_us:.2f} us")
    print(
        f"points delivered: {stats['delivered']} of {stats['accepted']} "
        f"(all flushed: {delivered}, spilled on a full queue then delivered: "
        f"{stats['spilled']})"
    )
    print(f"callback_overhead_pct: {overhead:.3f}")


def _overhead(pairs: list[tuple[float, float]]) -> float:
    without = sum(p[0] for p in pairs)
    return (sum(p[1] for p in pairs) - without) / without * 100


def _interval(
    samples: list[Any], statistic: Callable[[list[Any]], float], rounds: int = 1000
) -> tuple[float, float]:
    """A 95% bootstrap interval of ``statistic`` over ``samples``."""
    rng = random.Random(0)
    values = sorted(
        statistic([samples[rng.randrange(len(samples))] for _ in samples]) for _ in range(rounds)
    )
    return values[int(rounds * 0.025)], values[int(rounds * 0.975)]


if __name__ == "__main__":
    sys.exit(run_app(app, None, "python -m bench.callback_overhead"))
