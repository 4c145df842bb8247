"""The demo pipeline as a user runs it (``examples.demo``: every service, two CPU agents,
preprocess -> SFT -> [GRPO, DPO] -> evaluation), on a scratch namespace and database.

Prints the pipeline's wall time (submit to end, and with the services' start), the evaluation
table, and the per-stage overhead the platform adds: for each training stage, the time from its
dependencies finishing (the latest ``StageSucceeded`` among them on the pipeline's event log; the
``PipelineSubmitted`` event for a stage without any) to its training's first step (the first
metric point's timestamp), split into the platform's scheduling (to ``StageStarted``) and the
stage process's start (to the first point: process, imports, model and data loading, the first
step itself).

    python -m bench.demo [--runs 1] [--pipeline FILE]

Last line: ``stage_start_overhead_p50_ms: X`` (the median over every training stage of every run).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from bench.common import drop_database, drop_namespace, fresh_namespace, load
from examples.demo import (
    DEFAULT_PIPELINE,
    BaselineOption,
    DemoRun,
    PipelineOption,
    TimeoutOption,
    evaluation_table,
    run_demo,
)
from posttrain.service.commands import command_app, run_app
from posttrain.service.settings import database_url
from posttrain.testing import databases


async def stage_overheads(run: DemoRun, database: str) -> list[tuple[str, float, float]]:
    """(stage, dependencies-done -> StageStarted, StageStarted -> first metric point) in seconds,
    for each stage whose job stored points, its last attempt."""
    import asyncpg

    from posttrain.metrics_ingest.queries import get_job_points
    from posttrain.orchestrator.client import aget_pipeline_history

    events: list[dict[str, Any]] = []
    after: int | None = None
    while True:
        page = await aget_pipeline_history(
            run.pipeline_id, after=after, limit=500, database_url=database
        )
        assert page is not None, "the pipeline has no history"
        events += page["events"]
        after = page["next_after"]
        if after is None:
            break
    submitted = next(e["at"] for e in events if e["type"] == "PipelineSubmitted")
    succeeded = {e["stage"]: e["at"] for e in events if e["type"] == "StageSucceeded"}
    found = []
    conn = await asyncpg.connect(database)
    try:
        for stage in run.status["stages"]:
            if stage["task"] != "train_model" or not stage["job_id"]:
                continue
            points = await get_job_points(stage["job_id"], db=conn)
            if not points:
                continue
            first_step = min(p.point.timestamp for p in points)
            started = max(
                e["at"]
                for e in events
                if e["type"] == "StageStarted" and e["stage"] == stage["name"]
            )
            ready = max((succeeded[d] for d in stage["depends_on"]), default=submitted)
            found.append(
                (
                    stage["name"],
                    _seconds(started) - _seconds(ready),
                    first_step - _seconds(started),
                )
            )
    finally:
        await conn.close()
    return found


def _seconds(at: datetime | float) -> float:
    return at.timestamp() if isinstance(at, datetime) else float(at)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


async def one_run(
    index: int, pipeline: Path, baseline: str, timeout: float, work: Path
) -> tuple[DemoRun, list[Any]]:
    settings = await fresh_namespace("demo")
    # Every service's tables, as `posttrain stack up` makes them in the default database.
    database = await databases.create_database(database_url(), "bench_demo", migrate=True)
    try:
        began = time.time()
        run = await run_demo(
            settings,
            database,
            pipeline_file=pipeline,
            baseline=baseline,
            timeout=timeout,
            logs=work / f"run{index}" / "logs",
            work=work / f"run{index}" / "agents",
            reports=work / "reports",
            quiet=True,
        )
        overheads = await stage_overheads(run, database)
    finally:
        await drop_namespace(settings)
        await drop_database(database)
    print(f"\nrun {index}: pipeline {run.pipeline_id} {run.status['status']}")
    print(
        f"  wall time: {run.finished_at - run.submitted_at:.1f} s from submit to end, "
        f"{run.finished_at - began:.1f} s with the services' start ({load()})"
    )
    print("  evaluation on held-out prompts:")
    print("\n".join("  " + line for line in evaluation_table(run.report)))
    for found in run.improvements:
        print(f"  {found.describe()}")
    print("  per-stage start overhead (dependencies done -> StageStarted -> first step):")
    for stage, scheduled, started in overheads:
        print(
            f"    {stage:<12} {1000 * (scheduled + started):8.0f} ms "
            f"(scheduling {1000 * scheduled:.0f} ms, stage process start {1000 * started:.0f} ms)"
        )
    print(f"  report: {run.report_page}")
    return run, overheads


async def main_async(
    runs: int, pipeline: Path, baseline: str, timeout: float, work: Path | None
) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        where = work or Path(tmp)
        overheads: list[float] = []
        above = 0
        for index in range(1, runs + 1):
            run, found = await one_run(index, pipeline, baseline, timeout, where)
            overheads += [scheduled + started for _, scheduled, started in found]
            above += run.rl_above_baseline
        print(f"\nruns with every RL stage above {baseline}: {above}/{runs}")
        print(f"stage_start_overhead_p50_ms: {1000 * median(overheads):.0f}")


app = command_app()


@app.command()
def _bench(
    runs: Annotated[int, typer.Option(help="demo runs, one after the other")] = 1,
    pipeline: PipelineOption = DEFAULT_PIPELINE,
    baseline: BaselineOption = "train_sft",
    timeout: TimeoutOption = 1800.0,
    work: Annotated[
        Path | None, typer.Option(help="keep logs, agents' work and reports here")
    ] = None,
) -> None:
    """The demo on a scratch namespace and database, timed; the stage start overhead."""
    asyncio.run(main_async(runs, pipeline, baseline, timeout, work))


if __name__ == "__main__":
    sys.exit(run_app(app, None, "python -m bench.demo"))
