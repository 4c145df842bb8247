"""The main job: the example pipeline, end to end, on the local stack, showing what post-training
buys.

Starts the platform's services as real processes (orchestrator, metrics ingest, diagnostics, its
recorder, the gateway and two CPU trainer agents), waits until each says it is ready, submits
``examples/pipelines/arithmetic.yaml`` (preprocess -> SFT -> [GRPO, DPO] in parallel, one on each
agent -> evaluation of all three on held-out prompts; a tiny model learning addition), follows it
stage by stage with the latest metrics of each training job, and ends with a summary: the
evaluation table, whether each RL stage beat the SFT model in both reward and accuracy, what
diagnostics raised and did, the web page's address and a report (an HTML page with charts,
``$POSTTRAIN_HOME/reports/<pipeline>/index.html``). Then it stops what it started.

    python -m examples.demo [--pipeline FILE] [--baseline STAGE] [--timeout 1800]

Exit status 0 only when the pipeline succeeded and every evaluated stage beat the baseline.
Service logs go to ``$POSTTRAIN_HOME/logs/demo/``. Afterwards, ``posttrain pipeline status
<id>`` still shows the run, and ``posttrain gateway`` serves its web page again.
``bench.demo`` runs the same job on a scratch namespace and database (``run_demo``).
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from posttrain.events.kafka import KafkaSettings
from posttrain.orchestrator.client import PipelineExecutor, aget_pipeline_status
from posttrain.pipeline_cli import load_pipeline_file
from posttrain.report import Improvement, RunReport, collect_report, improvements, write_report
from posttrain.service.commands import command_app, run_app
from posttrain.service.settings import database_url, posttrain_home
from posttrain.testing import services

HERE = Path(__file__).resolve().parent
HOME = posttrain_home()

# The demo's options, as this demo and bench.demo spell them.
PipelineOption = Annotated[Path, typer.Option(help="the pipeline file (YAML or JSON)")]
BaselineOption = Annotated[str, typer.Option(help="the stage RL must beat")]
TimeoutOption = Annotated[float, typer.Option(help="seconds the pipeline may take")]
DEFAULT_PIPELINE = HERE / "pipelines" / "arithmetic.yaml"
AGENTS = ("demo-cpu-1", "demo-cpu-2")
TERMINAL = ("succeeded", "failed", "cancelled", "rejected")


@dataclass(frozen=True)
class DemoRun:
    """What one run of the demo pipeline ended with."""

    pipeline_id: str
    status: dict[str, Any]
    report: RunReport
    report_page: Path
    improvements: list[Improvement]
    anomalies: list[str]
    submitted_at: float  # time.time() when the pipeline was submitted
    finished_at: float

    @property
    def rl_above_baseline(self) -> bool:
        return bool(self.improvements) and all(i.improved for i in self.improvements)


def platform(
    settings: KafkaSettings, database: str, logs: Path, work: Path
) -> list[services.ServiceProcess]:
    """The platform's services on ``settings``' namespace and ``database``, each with a /healthz
    of its own (free ports, so a platform already running here is not disturbed). Each agent has
    one stage slot, so the two RL stages run at once, one on each."""
    return [
        services.orchestrator(
            settings,
            logs / "orchestrator.log",
            database_url=database,
            tick_interval_s=0.5,
            extra=("--replay-processes", "1"),
        ),
        services.ingest(settings, database, logs / "metrics-ingest.log"),
        services.diagnostics(settings, logs / "diagnostics.log"),
        services.recorder(settings, database, logs / "recorder.log"),
        services.gateway(settings, database, logs / "gateway.log"),
        *(
            services.agent(
                settings,
                logs / f"agent-{name}.log",
                name=name,
                work_dir=work / name,
                slots=1,
                cwd=HERE.parent,
            )
            for name in AGENTS
        ),
    ]


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


async def latest_metrics(job_id: str, shown: dict[str, int], db: Any) -> str:
    """The newest point of a job, once per step."""
    from posttrain.metrics_ingest.queries import get_latest_metrics

    points = await get_latest_metrics(job_id, limit=1, db=db)
    if not points or shown.get(job_id) == points[0].point.step:
        return ""
    point = points[0].point
    shown[job_id] = point.step
    fields = {
        k: v
        for k, v in point.model_dump().items()
        if v is not None and k not in ("custom", "timestamp", "epoch")
    }
    return "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())


def summary(outputs: dict[str, Any]) -> str:
    """The few outputs a person looks at first."""
    if "results" in outputs:
        return f"{len(outputs['results'])} models evaluated"
    metrics = outputs.get("metrics", {})
    keys = ("loss", "reward", "mean_token_accuracy", "rewards/accuracies")
    shown = {k: metrics[k] for k in keys if k in metrics}
    if "steps" in outputs:
        shown = {"steps": outputs["steps"], **shown}
    if "rows" in outputs:
        shown = {"rows": outputs["rows"], "tokens": outputs.get("tokens")}
    return "  ".join(f"{k}={_fmt(v)}" for k, v in shown.items())


async def follow(
    pipeline_id: str,
    database: str,
    timeout: float,
    processes: list[services.ServiceProcess],
    *,
    quiet: bool = False,
) -> dict[str, Any]:
    """Print each stage's changes (and a running job's latest metrics every 5 s) until the
    pipeline ends; its final status."""
    import asyncpg

    seen: dict[str, str] = {}
    shown: dict[str, int] = {}
    last_metrics = 0.0
    deadline = time.time() + timeout
    db = await asyncpg.connect(database)
    try:
        while time.time() < deadline:
            for service in processes:
                if not service.running:
                    raise SystemExit(f"{service.name} exited: see {service.log}")
            status = await aget_pipeline_status(pipeline_id, db=db)
            if status is not None:
                for stage in status["stages"]:
                    state = f"{stage['status']} (attempt {stage['attempt']})"
                    if seen.get(stage["name"]) != state and not quiet:
                        extra = stage["waiting_reason"] or stage["error"] or stage["agent_id"]
                        print(
                            f"[{time.strftime('%H:%M:%S')}] {stage['name']:<12} {state} "
                            f"{extra or ''}",
                            flush=True,
                        )
                    seen[stage["name"]] = state
                if time.time() - last_metrics > 5 and not quiet:
                    last_metrics = time.time()
                    for stage in status["stages"]:
                        if stage["status"] == "running" and stage["job_id"]:
                            line = await latest_metrics(stage["job_id"], shown, db)
                            if line:
                                print(f"           {stage['name']:<12} {line}", flush=True)
                if status["status"] in TERMINAL:
                    return status
            await asyncio.sleep(0.5)
    finally:
        await db.close()
    raise SystemExit(f"the pipeline did not finish within {timeout:.0f} s")


async def recorded(pipeline_id: str, database: str) -> list[str]:
    """The pipeline's anomalies and the actions taken on each, as the recorder kept them."""
    from posttrain.diagnostics.queries import aget_anomalies

    lines = []
    for anomaly in await aget_anomalies(pipeline_id=pipeline_id, database_url=database):
        actions = ", ".join(f"{a.action} {a.status}" for a in anomaly.actions) or "no action"
        lines.append(
            f"{anomaly.stage or '':<10} step {anomaly.step:>5}  {anomaly.anomaly_type:<18} "
            f"{anomaly.severity:<8} -> {actions}"
        )
    return lines


async def run_demo(
    settings: KafkaSettings,
    database: str,
    *,
    pipeline_file: Path,
    baseline: str,
    timeout: float,
    logs: Path,
    work: Path,
    reports: Path,
    quiet: bool = False,
) -> DemoRun:
    """Start the platform on ``settings``' namespace and ``database``, run the pipeline, write
    its report under ``reports/<pipeline>/``, stop the platform; what it ended with."""
    await asyncio.to_thread(logs.mkdir, parents=True, exist_ok=True)
    processes = [service.start() for service in platform(settings, database, logs, work)]
    say = (lambda *_: None) if quiet else print
    say(f"starting {', '.join(s.name for s in processes)} (logs in {logs})")
    try:
        # Each says when it reads what it is sent: nothing is submitted before.
        await asyncio.gather(*(service.wait_ready() for service in processes))
        say("every service is ready")
        doc = load_pipeline_file(str(pipeline_file))
        pipeline_id = f"demo-{uuid.uuid4().hex[:8]}"
        submitted_at = time.time()
        submitted = await PipelineExecutor(
            pipeline_id, submitted_by="demo", settings=settings
        ).aexecute(doc.stages, name=doc.name)
        gateway = next(s for s in processes if s.name == "gateway")
        web_url = f"http://127.0.0.1:{gateway.port}/#/pipelines/{pipeline_id}"
        say(f"submitted {doc.name} as {pipeline_id}; watch it live at {web_url}")
        for i, layer in enumerate(submitted["layers"]):
            say(f"  layer {i}: {', '.join(layer)}")
        final = await follow(pipeline_id, database, timeout, processes, quiet=quiet)
        finished_at = time.time()
        anomalies = await recorded(pipeline_id, database)
        report = await collect_report(pipeline_id, database, baseline=baseline, web_url=web_url)
    finally:
        services.stop_all(processes)
    page = await asyncio.to_thread(write_report, report, reports / pipeline_id)
    return DemoRun(
        pipeline_id=pipeline_id,
        status=final,
        report=report,
        report_page=page,
        improvements=improvements(report.evaluation, baseline),
        anomalies=anomalies,
        submitted_at=submitted_at,
        finished_at=finished_at,
    )


def evaluation_table(report: RunReport) -> list[str]:
    """The evaluation table as text lines."""
    lines = [f"  {'model of stage':<14} {'accuracy':>8} {'reward':>8} {'loss':>8}"]
    for row in report.evaluation:
        cells = [
            f"{v:>8.3f}" if v is not None else f"{'':>8}"
            for v in (row.accuracy, row.reward, row.loss)
        ]
        lines.append(f"  {row.stage:<14} {' '.join(cells)}")
    return lines


def print_summary(run: DemoRun, baseline: str) -> None:
    final = run.status
    print(
        f"\npipeline {run.pipeline_id}: {final['status']} "
        f"in {run.finished_at - run.submitted_at:.0f} s"
    )
    for stage in final["stages"]:
        print(
            f"  {stage['name']:<12} {stage['status']:<10} {stage['agent_id'] or '':<11} "
            f"{summary(stage['outputs'])}"
        )
    print("\nevaluation on held-out prompts (greedy; same seeds):")
    print("\n".join(evaluation_table(run.report)))
    print()
    if not run.improvements:
        print(f"post-training: no verdict ({baseline} or the RL stages were not evaluated)")
    for found in run.improvements:
        print(f"post-training: {found.describe()}")
    if run.rl_above_baseline:
        print(f"every RL stage beat {baseline} in both reward and accuracy")
    if run.anomalies:
        print(f"\nwhat diagnostics saw and did ({len(run.anomalies)} anomalies):")
        for line in run.anomalies:
            print(f"  {line}")
    else:
        print("\ndiagnostics saw no anomaly")
    print(f"\nreport: {run.report_page}")
    print(
        f"web page: {run.report.web_url} while the demo ran; afterwards `posttrain gateway` "
        f"(with a token made, or --no-auth) serves it at "
        f"http://127.0.0.1:9460/#/pipelines/{run.pipeline_id}"
    )


app = command_app()


@app.command()
def _demo(
    pipeline: PipelineOption = DEFAULT_PIPELINE,
    baseline: BaselineOption = "train_sft",
    timeout: TimeoutOption = 1800.0,
) -> None:
    """Run the demo pipeline on the local stack and say whether RL beat the baseline."""
    from posttrain.doctor import run_doctor

    if run_doctor() != 0:
        raise typer.Exit(1)
    run = asyncio.run(
        run_demo(
            KafkaSettings.from_env(client_id="posttrain-demo"),
            database_url(),
            pipeline_file=pipeline,
            baseline=baseline,
            timeout=timeout,
            logs=HOME / "logs" / "demo",
            work=HOME / "demo",
            reports=HOME / "reports",
        )
    )
    print_summary(run, baseline)
    if run.status["status"] != "succeeded":
        raise typer.Exit(1)
    if not run.rl_above_baseline:
        print(f"post-training did NOT pay off on every RL stage against {baseline}")
        raise typer.Exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, "python -m examples.demo")


if __name__ == "__main__":
    sys.exit(main())
