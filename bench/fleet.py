"""The orchestrator at fleet scale (``posttrain.testing.fleet``): scripted agents in a few
processes, pipelines of eight stages submitted at a steady rate, against one orchestrator and
then two, each on a scratch topic namespace and database of its own. The orchestrators run as
shipped: the command's own defaults (not the test helper's quick ticks and short session) and
their read model projected into PostgreSQL.

Figures per run: decisions per second (events the orchestrators wrote, over the time from the
first submission to the last pipeline's end), dispatch latency (a stage ready -> its RunStage
received by an agent: p50, p99) and its two legs (``decide``: ready -> RunStage written by the
orchestrator's producer, its record's create time, which takes in the input's trip to the
orchestrator, the wait for the batch before it and the decision; ``deliver``: written ->
received, the transaction's commit and the agent's fetch), stages dispatched per second; then
the two instances' throughput over one's. The invariants (every pipeline ended as scripted,
each (stage, attempt) dispatched once, no RunStage refused for lack of a slot) are checked and
printed too.

First a warm-up: the same fleet for ``--warmup`` seconds (at the same submission rate) against
an orchestrator of its own, printed as ``warmup_*`` and counted in no figure. The broker is a
JVM that compiles what it runs hot: on a broker just started, the first minute of the fleet
ran at twice the steady dispatch latency (broker 100-180% of a core against ~60% later; one
instance's p99 280-570 ms against ~215 on the same broker warm), which measures the broker's
start, not the orchestrator at scale. The warm-up's invariants are checked like any run's.

    python -m bench.fleet [--agents 1000] [--pipelines 10000] [--submit-over 180] [--small]
                          [--warmup 30]

The last line is ``fleet_dispatch_p99_ms: X`` (one instance's; goal: at most 200).
"""

from __future__ import annotations

import asyncio
import inspect
import shutil
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from bench.common import (
    drop_database,
    drop_namespace,
    fresh_database,
    fresh_namespace,
    load,
    percentile,
)
from posttrain.orchestrator.shell import main as orchestrator_command
from posttrain.testing.fleet import (
    FleetReport,
    FleetScript,
    quiet_collector_of_standin,
    run_fleet,
)

SMALL = FleetScript(
    agents=50,
    processes=2,
    slots=3,
    heartbeat_s=0.5,
    pipelines=120,
    submit_over_s=6.0,
    stage_s=(0.05, 0.2),
    outages=2,
    outage_s=4.0,
    deadline_s=60.0,
)

# Seconds of fleet run before the measured ones (see the module's doc).
WARMUP_S = 30.0


def summary(label: str, report: FleetReport) -> dict[str, float]:
    ms = report.dispatch_ms or [float("nan")]
    seconds = max(report.seconds, 1e-9)
    figures = {
        "decisions_per_s": report.events / seconds,
        "stages_per_s": sum(report.dispatched.values()) / seconds,
        "pipelines_per_s": report.ended / seconds,
        "dispatch_p50_ms": statistics.median(ms),
        "dispatch_p99_ms": percentile(ms, 0.99),
        "dispatch_max_ms": max(ms),
        # where the time goes: ready -> RunStage written, written -> received
        "decide_p50_ms": statistics.median(report.decide_ms or [float("nan")]),
        "decide_p99_ms": percentile(report.decide_ms or [float("nan")], 0.99),
        "deliver_p50_ms": statistics.median(report.deliver_ms or [float("nan")]),
        "deliver_p99_ms": percentile(report.deliver_ms or [float("nan")], 0.99),
    }
    print(
        f"{label}: {report.script.agents} agents in {report.script.processes} processes, "
        f"{report.submitted} pipelines submitted over {report.script.submit_over_s:g} s, "
        f"{report.ended} ended ({len(report.failed)} failed, {len(report.expected_failed)} "
        f"scripted to fail) in {report.seconds:.1f} s; {report.lost} stages lost with their "
        f"agent; {len(report.refused)} RunStage refused; {load()}"
    )
    for name, value in figures.items():
        print(f"  {label}_{name}: {value:.1f}")
    problems = report.problems()
    print(f"  {label}_invariants: {'hold' if not problems else '; '.join(problems)}")
    return figures


def shipped_orchestrator_args() -> list[str]:
    """The orchestrator command's own defaults for what the test helper sets otherwise (quick
    ticks and silence, a short session, no replay helpers): the bench runs what users run."""
    defaults = inspect.signature(orchestrator_command.run).parameters
    names = ("tick_interval", "silence_intervals", "session_timeout_ms", "replay_processes")
    return [
        arg
        for name in names
        for arg in (f"--{name.replace('_', '-')}", str(defaults[name].default))
    ]


async def one(script: FleetScript, orchestrators: int) -> FleetReport:
    settings = await fresh_namespace(f"fleet{orchestrators}")
    database = await fresh_database(f"fleet{orchestrators}")
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-fleet-{orchestrators}-"))
    try:
        return await run_fleet(
            settings,
            script,
            workdir,
            orchestrators=orchestrators,
            orchestrator_args=shipped_orchestrator_args(),
            database_url=database,  # the read model projected, as a deployment's is
        )
    finally:
        await drop_namespace(settings)
        await drop_database(database)
        shutil.rmtree(workdir, ignore_errors=True)


async def run(script: FleetScript, instances: list[int], warmup_s: float) -> None:
    if warmup_s > 0:
        warmup = replace(
            script,
            pipelines=max(1, round(script.pipelines * warmup_s / script.submit_over_s)),
            submit_over_s=warmup_s,
        )
        summary("warmup", await one(warmup, 1))
    results = {}
    for n in instances:
        results[n] = summary(f"instances_{n}", await one(script, n))
    if 1 in results and 2 in results:
        print(
            "two_over_one_decisions_per_s: "
            f"{results[2]['decisions_per_s'] / results[1]['decisions_per_s']:.2f}"
        )
    first = results[min(results)]
    print(f"fleet_dispatch_p99_ms: {first['dispatch_p99_ms']:.1f}")


def main(
    agents: Annotated[int, typer.Option(help="scripted agents")] = 1000,
    processes: Annotated[int, typer.Option(help="simulator processes the agents run in")] = 3,
    pipelines: Annotated[int, typer.Option(help="pipelines of eight stages")] = 10_000,
    submit_over: Annotated[float, typer.Option(help="seconds the submissions span")] = 180.0,
    deadline: Annotated[float, typer.Option(help="seconds a run may take in all")] = 420.0,
    small: Annotated[bool, typer.Option(help="the integration test's size")] = False,
    instances: Annotated[str, typer.Option(help="orchestrator counts to run")] = "1,2",
    warmup: Annotated[
        float | None,
        typer.Option(
            help="seconds of fleet run first, in no figure (0: none; default 30, 0 with --small)"
        ),
    ] = None,
) -> None:
    """Dispatch latency and decisions per second at fleet scale, one and two orchestrators."""
    script = (
        SMALL
        if small
        else FleetScript(
            agents=agents,
            processes=processes,
            pipelines=pipelines,
            submit_over_s=submit_over,
            deadline_s=deadline,
        )
    )
    # The submitter and the log's tally stamp times the figures are made of: no full
    # collection of this process's modules stalls them (as in the agents' shards).
    quiet_collector_of_standin()
    warmup_s = warmup if warmup is not None else (0.0 if small else WARMUP_S)
    asyncio.run(run(script, [int(x) for x in instances.split(",")], warmup_s))


if __name__ == "__main__":
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(main)
    app()
