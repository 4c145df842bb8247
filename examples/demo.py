"""The main job: the example pipeline, end to end, on the local stack.

Starts the platform's services as real processes (orchestrator, metrics ingest, diagnostics, its
recorder and one CPU trainer agent), waits until each says it is ready, submits
``examples/pipelines/arithmetic.yaml`` (preprocess -> SFT -> [GRPO, DPO] -> evaluate, a tiny
model learning addition), follows it stage by stage with the latest metrics of each training
job, prints the outcome with what diagnostics raised and did, and stops what it started.

    python -m examples.demo [--pipeline FILE] [--timeout 1800]

Service logs go to ``$POSTTRAIN_HOME/logs/demo/``. Afterwards,
``posttrain pipeline status <id>`` still shows the run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from posttrain.doctor import run_doctor
from posttrain.events.kafka import KafkaSettings
from posttrain.orchestrator.client import PipelineExecutor, aget_pipeline_status
from posttrain.pipeline_cli import load_pipeline_file
from posttrain.service.settings import database_url, posttrain_home
from posttrain.testing import services

HERE = Path(__file__).resolve().parent
HOME = posttrain_home()


def platform(logs: Path, agent_dir: Path) -> list[services.ServiceProcess]:
    """The platform's services on the default namespace and database, each with a /healthz of
    its own (free ports, so a platform already running here is not disturbed)."""
    settings = KafkaSettings.from_env(client_id="posttrain-demo")
    database = database_url()
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
        services.agent(
            settings, logs / "agent.log", name="demo-cpu-1", work_dir=agent_dir, cwd=HERE.parent
        ),
    ]


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


async def latest_metrics(job_id: str, shown: dict[str, int]) -> str:
    """The newest point of a job, once per step."""
    from posttrain.metrics_ingest import get_latest_metrics

    points = await get_latest_metrics(job_id, limit=1)
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
        return "; ".join(
            f"{Path(r['model']).parent.name}: accuracy {r.get('eval_accuracy', 0):.2f}, "
            f"reward {r.get('reward_mean', 0):.2f}"
            for r in outputs["results"]
        )
    metrics = outputs.get("metrics", {})
    keys = ("loss", "reward", "mean_token_accuracy", "rewards/accuracies")
    shown = {k: metrics[k] for k in keys if k in metrics}
    if "steps" in outputs:
        shown = {"steps": outputs["steps"], **shown}
    if "rows" in outputs:
        shown = {"rows": outputs["rows"], "tokens": outputs.get("tokens")}
    return "  ".join(f"{k}={_fmt(v)}" for k, v in shown.items())


async def follow(
    pipeline_id: str, timeout: float, processes: list[services.ServiceProcess]
) -> dict[str, Any]:
    seen: dict[str, str] = {}
    shown: dict[str, int] = {}
    last_metrics = 0.0
    deadline = time.time() + timeout
    while time.time() < deadline:
        for service in processes:
            if not service.running:
                raise SystemExit(f"{service.name} exited: see {service.log}")
        status = await aget_pipeline_status(pipeline_id)
        if status is not None:
            for stage in status["stages"]:
                state = f"{stage['status']} (attempt {stage['attempt']})"
                if seen.get(stage["name"]) != state:
                    seen[stage["name"]] = state
                    extra = stage["waiting_reason"] or stage["error"] or ""
                    print(
                        f"[{time.strftime('%H:%M:%S')}] {stage['name']:<12} {state} {extra}",
                        flush=True,
                    )
            if time.time() - last_metrics > 5:
                last_metrics = time.time()
                for stage in status["stages"]:
                    if stage["status"] == "running" and stage["job_id"]:
                        line = await latest_metrics(stage["job_id"], shown)
                        if line:
                            print(f"           {stage['name']:<12} {line}", flush=True)
            if status["status"] in ("succeeded", "failed", "cancelled", "rejected"):
                return status
        await asyncio.sleep(1)
    raise SystemExit(f"the pipeline did not finish within {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pipeline", default=str(HERE / "pipelines" / "arithmetic.yaml"))
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    if run_doctor() != 0:
        return 1
    return asyncio.run(run(args))


async def run(args: argparse.Namespace) -> int:
    logs = HOME / "logs" / "demo"
    logs.mkdir(parents=True, exist_ok=True)
    processes = [service.start() for service in platform(logs, HOME / "demo" / "agent")]
    print(f"starting {', '.join(s.name for s in processes)} (logs in {logs})")
    try:
        # Each says when it reads what it is sent: nothing is submitted before.
        await asyncio.gather(*(service.wait_ready() for service in processes))
        print("every service is ready")
        doc = load_pipeline_file(args.pipeline)
        pipeline_id = f"demo-{uuid.uuid4().hex[:8]}"
        submitted = await PipelineExecutor(pipeline_id, submitted_by="demo").aexecute(
            doc.stages, name=doc.name
        )
        print(f"submitted {doc.name} as {pipeline_id}")
        for i, layer in enumerate(submitted["layers"]):
            print(f"  layer {i}: {', '.join(layer)}")
        final = await follow(pipeline_id, args.timeout, processes)
        anomalies = await recorded(pipeline_id)
    finally:
        services.stop_all(processes)
    print(f"\npipeline {pipeline_id}: {final['status']}")
    for stage in final["stages"]:
        print(
            f"  {stage['name']:<12} {stage['status']:<10} {stage['task_id']}  "
            f"{summary(stage['outputs'])}"
        )
    if anomalies:
        print(f"\nwhat diagnostics saw and did ({len(anomalies)} anomalies):")
        for line in anomalies:
            print(f"  {line}")
    else:
        print("\ndiagnostics saw no anomaly")
    return 0 if final["status"] == "succeeded" else 1


async def recorded(pipeline_id: str) -> list[str]:
    """The pipeline's anomalies and the actions taken on each, as the recorder kept them."""
    from posttrain.diagnostics.queries import aget_anomalies

    lines = []
    for anomaly in await aget_anomalies(pipeline_id=pipeline_id):
        actions = ", ".join(f"{a.action} {a.status}" for a in anomaly.actions) or "no action"
        lines.append(
            f"{anomaly.stage or '':<10} step {anomaly.step:>5}  {anomaly.anomaly_type:<18} "
            f"{anomaly.severity:<8} -> {actions}"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
