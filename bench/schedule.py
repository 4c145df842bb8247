"""Scheduling by readiness against the seed's layer-by-layer execution, on the real broker.

Two chains of stages whose lengths alternate (long/short, short/long) meet at the end: waiting
for a whole layer is wasteful there. The orchestrator runs as its own process; a scripted agent
stands in for the GPU node and sleeps each stage's duration. The same stages then run again
with every stage made to depend on the whole previous layer (what the original design did), in
the same run. The critical path is computed from the durations the agent actually measured.

    python -m bench.schedule [--long 3.0] [--short 0.3]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

from bench.common import drop_namespace, fresh_namespace
from posttrain.orchestrator.client import PipelineExecutor
from posttrain.orchestrator.core.dag import execution_layers, validate
from posttrain.service.commands import command_app, run_app
from posttrain.testing.orchestrator import read_log, start_orchestrator
from posttrain.testing.scripted_agent import ScriptedAgent


def dag(long: float, short: float) -> tuple[list[dict[str, Any]], dict[str, float]]:
    durations = {
        "root": short,
        "a1": long,
        "b1": short,
        "a2": short,
        "b2": long,
        "a3": long,
        "b3": short,
        "end": short,
    }
    deps = {
        "a1": ["root"],
        "b1": ["root"],
        "a2": ["a1"],
        "b2": ["b1"],
        "a3": ["a2"],
        "b3": ["b2"],
        "end": ["a3", "b3"],
    }
    stages = [
        {
            "name": n,
            "task": "command",
            "params": {"argv": ["sleep", str(d)]},
            "depends_on": deps.get(n, []),
        }
        for n, d in durations.items()
    ]
    return stages, durations


def layered(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same stages, each depending on every stage of the previous layer."""
    specs, errors = validate(stages)
    assert not errors
    layers = execution_layers(specs)
    depth = {name: i for i, layer in enumerate(layers) for name in layer}
    return [
        {**s, "depends_on": layers[depth[s["name"]] - 1] if depth[s["name"]] else []}
        for s in stages
    ]


def critical_path(stages: list[dict[str, Any]], took: dict[str, float]) -> float:
    longest: dict[str, float] = {}
    specs, _ = validate(stages)
    for layer in execution_layers(specs):
        for name in layer:
            deps = next(s["depends_on"] for s in stages if s["name"] == name)
            longest[name] = took[name] + max((longest[d] for d in deps), default=0.0)
    return max(longest.values())


async def run_once(
    settings: Any, agent: ScriptedAgent, stages: list[dict[str, Any]], pipeline_id: str
) -> tuple[float, dict[str, float], list[float]]:
    submitted = time.time()
    await PipelineExecutor(pipeline_id, settings=settings).aexecute(stages)
    deadline = time.time() + 120
    while time.time() < deadline:
        events = [e for e in await read_log(settings) if e.key == pipeline_id]
        if any(e.type == "PipelineSucceeded" for e in events):
            break
        await asyncio.sleep(0.2)
    else:
        raise TimeoutError(f"{pipeline_id} did not finish")
    times = {
        cmd.split(":")[-2]: t
        for cmd, t in agent.timeline.items()
        if cmd.startswith(pipeline_id + ":")
    }
    makespan = max(t["finished"] for t in times.values()) - submitted
    took = {name: t["finished"] - t["started"] for name, t in times.items()}
    dispatch = []
    for s in stages:
        ready = max((times[d]["finished"] for d in s.get("depends_on", [])), default=submitted)
        dispatch.append(times[s["name"]]["received"] - ready)
    return makespan, took, dispatch


async def measure(long: float, short: float) -> None:
    stages, durations = dag(long, short)
    settings = await fresh_namespace("schedule")
    workdir = Path(tempfile.mkdtemp(prefix="bench-schedule-"))
    agent = ScriptedAgent(
        settings, "gpu-1", workdir / "record.jsonl", durations=durations, heartbeat_s=1.0
    )
    await agent.start()
    orchestrator = start_orchestrator(settings, workdir / "orchestrator.log", "--no-projection")
    try:
        # warm-up: the orchestrator joins its group and learns about the agent
        await run_once(
            settings,
            agent,
            [{"name": "warm", "task": "command", "params": {"argv": ["true"]}}],
            "warm-up",
        )
        ready_span, took, dispatch = await run_once(
            settings, agent, stages, f"ready-{uuid.uuid4().hex[:6]}"
        )
        critical = critical_path(stages, took)
        layer_span, layer_took, _ = await run_once(
            settings, agent, layered(stages), f"layered-{uuid.uuid4().hex[:6]}"
        )
        layer_critical = critical_path(stages, layer_took)
    finally:
        orchestrator.stop()
        await agent.stop()
        await drop_namespace(settings)
    ms = sorted(d * 1000 for d in dispatch)
    print(f"stages: {len(stages)}  long: {long} s  short: {short} s")
    print(f"dispatch_p50_ms: {statistics.median(ms):.1f}")
    print(f"dispatch_max_ms: {ms[-1]:.1f}")
    print(f"critical_path_s: {critical:.2f}")
    print(f"makespan_s: {ready_span:.2f}")
    print(f"layer_by_layer_makespan_s: {layer_span:.2f}")
    print(f"layer_by_layer_over_critical_path: {layer_span / layer_critical:.3f}")
    print(f"makespan_over_critical_path: {ready_span / critical:.3f}")


app = command_app()


@app.command()
def _bench(
    long: Annotated[float, typer.Option(help="a long stage's seconds")] = 3.0,
    short: Annotated[float, typer.Option(help="a short stage's seconds")] = 0.3,
) -> None:
    """Scheduling by readiness against layer-by-layer execution, on the real broker."""
    asyncio.run(measure(long, short))


if __name__ == "__main__":
    sys.exit(run_app(app, None, "python -m bench.schedule"))
