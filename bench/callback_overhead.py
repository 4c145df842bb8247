"""What the training callback costs a training step.

A tiny Llama (hidden 64, 2 layers, the agent's character tokenizer) trains on the addition data
with a plain torch loop. In the same run, blocks of steps alternate between no reporting and
``create_training_callback`` reporting 20 fields per step to the real broker (a throwaway
namespace); the figure is the median over block pairs of (with - without) / without. The
callback's own cost per call is measured too, for scale. All points are flushed and counted at
the end.

    python -m bench.callback_overhead [--blocks 30] [--steps-per-block 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import drop_namespace, fresh_namespace
from posttrain.events.topics import Topic

DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "addition_train.jsonl"


def _batches(tokenizer: Any, batch_size: int) -> list[Any]:
    import json

    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    texts = [r["prompt"] + r["completion"] + tokenizer.eos_token for r in rows]
    encoded = tokenizer(texts, return_tensors="pt", padding=True)
    ids = encoded["input_ids"]
    labels = ids.masked_fill(encoded["attention_mask"] == 0, -100)
    out = []
    for start in range(0, len(texts) - batch_size + 1, batch_size):
        out.append((ids[start : start + batch_size], labels[start : start + batch_size]))
    return out or [(ids, labels)]


def _fields(step: int, loss: float, grad_norm: float) -> dict[str, Any]:
    """20 fields per step: 18 metrics besides step and epoch, canonical and custom."""
    return {
        "loss": loss,
        "policy_loss": loss,
        "value_loss": loss / 2,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=80)
    parser.add_argument("--steps-per-block", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--linger-s", type=float, default=None, help="the reporter's batching wait")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.trainer_agent.reporting import ReporterOptions, create_training_callback
    from posttrain.trainer_agent.tiny import build_tiny_model

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="bench-callback-"))
    model_dir = build_tiny_model(scratch / "tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = _batches(tokenizer, args.batch_size)
    settings = asyncio.run(fresh_namespace("callback", [Topic.METRICS]))
    options = (
        ReporterOptions() if args.linger_s is None else ReporterOptions(linger_s=args.linger_s)
    )
    report = create_training_callback(
        "bench-job", settings=settings, spill_dir=scratch / "spill", options=options
    )
    step = 0

    def train_step(with_callback: bool) -> float:
        nonlocal step
        started = time.perf_counter()
        ids, labels = batches[step % len(batches)]
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        if with_callback:
            report(step=step, epoch=step / 100, **_fields(step, loss.detach(), grad_norm))
        return time.perf_counter() - started

    for _ in range(30):  # warm-up: allocator, kernels, the producer's connection
        train_step(True)
    report.flush(30)
    without: list[float] = []
    with_cb: list[float] = []
    pairs: list[tuple[float, float]] = []  # (sum without, sum with) per block pair
    for block in range(args.blocks):
        # Alternate which variant goes first, so that drift hits both alike.
        order = (False, True) if block % 2 == 0 else (True, False)
        sums = {}
        for variant in order:
            times = [train_step(variant) for _ in range(args.steps_per_block)]
            sums[variant] = sum(times)
            (with_cb if variant else without).extend(times)
        pairs.append((sums[False], sums[True]))

    # The call itself, in a tight loop: what the training thread pays per step.
    calls = 20_000
    started = time.perf_counter()
    for i in range(calls):
        report(step=step + i, epoch=0.0, **_fields(i, 1.0, 1.0))
    per_call_us = (time.perf_counter() - started) / calls * 1e6
    delivered = report.flush(120)
    stats = report.stats()
    report.close()
    asyncio.run(drop_namespace(settings))

    median_without = statistics.median(without)
    overhead = _overhead(pairs)
    low, high = _bootstrap(pairs)
    print(f"steps: {len(without)} without, {len(with_cb)} with the callback (20 fields/step)")
    print(
        f"mean step without callback: {statistics.fmean(without) * 1e3:.3f} ms "
        f"(median {median_without * 1e3:.3f})"
    )
    print(
        f"mean step with callback: {statistics.fmean(with_cb) * 1e3:.3f} ms "
        f"(median {statistics.median(with_cb) * 1e3:.3f})"
    )
    print(
        f"callback call, tight loop: {per_call_us:.2f} us "
        f"({per_call_us / (median_without * 1e6) * 100:.3f}% of a median step)"
    )
    print(
        f"points delivered: {stats['delivered']} of {stats['accepted']} "
        f"(all flushed: {delivered}, spilled then delivered: {stats['spilled']})"
    )
    print(f"overhead 95% interval (bootstrap over block pairs): [{low:.3f}, {high:.3f}] %")
    print(f"callback_overhead_pct: {overhead:.3f}")


def _overhead(pairs: list[tuple[float, float]]) -> float:
    """Total time with over total time without, as a percentage above 1."""
    without = sum(p[0] for p in pairs)
    return (sum(p[1] for p in pairs) - without) / without * 100


def _bootstrap(pairs: list[tuple[float, float]], rounds: int = 2000) -> tuple[float, float]:
    import random

    rng = random.Random(0)
    values = sorted(
        _overhead([pairs[rng.randrange(len(pairs))] for _ in pairs]) for _ in range(rounds)
    )
    return values[int(rounds * 0.025)], values[int(rounds * 0.975)]


if __name__ == "__main__":
    main()
