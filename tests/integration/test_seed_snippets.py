"""SEED.md's example code, copied as written (only the imports and the connection details
changed: ``from posttrain import ...`` and ``session`` as the database URL), run each in a fresh
Python process against the live platform: an orchestrator, the metrics ingest and a trainer agent
running real tiny training, on the test's own topics and database.

What each snippet prints is what the test checks: the seed's keys are there, the calls are plain
(not awaited), and the platform did what the snippet asked.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from posttrain.testing import services
from tests.integration.diagnostics.helpers import Receiver

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "data"

# The connection details of every snippet: the one change the seed allows besides imports.
PRELUDE = """\
import os, time
from pathlib import Path
from posttrain import (
    DiagnosticService, PipelineExecutor, create_metrics_file_writer, create_training_callback,
    flush_metrics, get_latest_metrics, get_pipeline_status, send_alert, sync_metrics_from_file,
)
session = os.environ["DATABASE_URL"]
"""

SFT = {
    "algorithm": "sft",
    "model_path": "tiny-llama",
    "train_data_path": "${preprocess.outputs.dataset}",
    "num_epochs": 1,
    "max_steps": 20,
    "batch_size": 16,
    "learning_rate": 0.003,
    "max_length": 16,
}
STAGES = [
    {
        "name": "preprocess",
        "task": "preprocess_dataset",
        "params": {"input_path": str(DATA / "addition_train.jsonl"), "model_path": "tiny-llama"},
    },
    {
        "name": "train_sft",
        "task": "train_model",
        "params": {"job_uuid": "sft-job-001", "config": SFT},
        "depends_on": ["preprocess"],
    },
    {
        "name": "train_rl_1",
        "task": "train_model",
        "params": {
            "job_uuid": "zzz1",
            "config": {
                "algorithm": "grpo",
                "model_path": "${train_sft.checkpoint}",
                "train_data_path": str(DATA / "addition_train.jsonl"),
                "reward_funcs": ["arithmetic"],
                "max_steps": 4,
                "batch_size": 8,
                "num_generations": 4,
                "max_completion_length": 3,
                "kl_coef": 0.1,
            },
        },
        "depends_on": ["train_sft"],
    },
    {
        "name": "train_rl_2",
        "task": "train_model",
        "params": {
            "job_uuid": "zzz2",
            "config": {
                "algorithm": "dpo",
                "model_path": "${train_sft.checkpoint}",
                "train_data_path": str(DATA / "addition_dpo.jsonl"),
                "max_steps": 4,
                "batch_size": 8,
                "max_length": 16,
                "kl_coef": 0.1,
            },
        },
        "depends_on": ["train_sft"],
    },
    {
        "name": "evaluate",
        "task": "run_evaluation",
        "params": {
            "models": ["${train_rl_1.checkpoint}", "${train_rl_2.checkpoint}"],
            "eval_data_path": str(DATA / "addition_eval.jsonl"),
            "reward_funcs": ["arithmetic"],
        },
        "depends_on": ["train_rl_1", "train_rl_2"],
    },
]

# The seed's pipeline example and its monitor (SEED.md, "How the note's examples call the API").
PIPELINE = """
stages = json.loads(os.environ["SEED_STAGES"])
executor = PipelineExecutor(pipeline_uuid="pipeline-001")
result = executor.execute(stages)
print(f"Execution plan: {len(result['layers'])} layers")
print("root task:", result["root_task_id"])

while True:
    status = get_pipeline_status("pipeline-001")
    if status is not None and status["status"] in ("succeeded", "failed", "cancelled"):
        break
    time.sleep(1)
print("pipeline:", status["status"], status["celery_task_id"])
for stage in status["stages"]:
    print("stage:", stage["name"], stage["status"], stage["celery_task_id"], stage["started_at"])
    metrics = get_latest_metrics(stage["job_uuid"], limit=10)
    if metrics:
        print("metrics:", stage["job_uuid"], len(metrics), metrics[0].loss)
"""

# The seed's trainer loop (mode A), then its monitor, diagnosis and alert.
CALLBACK = """
callback = create_training_callback(job_uuid="job-123")
for step in range(1, 41):
    loss = float("nan") if step == 30 else 2.0 / step
    callback(step=step, epoch=step / 40, policy_loss=loss, value_loss=0.5, reward_mean=0.1,
             reward_std=0.05, kl_divergence=0.01, grad_norm_actor=1.0, tokens_per_second=900.0,
             gpu_memory_allocated_gib=1.5)

job_uuid = "job-123"
while len(get_latest_metrics(job_uuid, limit=100)) < 40:
    time.sleep(0.5)
metrics = get_latest_metrics(job_uuid, limit=10)
print("latest:", metrics[0].step, metrics[0].loss)

diagnostics = DiagnosticService(session)
result = diagnostics.diagnose_step(job_uuid="job-123", step=30)
print("step 30:", result["has_anomaly"], result["anomaly_type"])
result = diagnostics.diagnose_job("job-123")
print("job:", result["has_anomaly"], result["anomaly_type"], len(result["suggestions"]))
send_alert(job_uuid, result["anomaly_type"], result["anomaly_message"])
"""

# Mode B: the file writer, as a remote trainer would use it.
FILE_WRITER = """
writer = create_metrics_file_writer(job_uuid="job-456", metrics_dir="./metrics")
for step in range(1, 26):
    writer(step=step, epoch=0, policy_loss=1.0 / step, reward_mean=0.2)
"""

# The troubleshooting one-liners, each in a fresh process.
ONE_LINERS = {
    "status": 'print(get_pipeline_status("pipeline-001"))',
    "resume": 'PipelineExecutor("pipeline-001").resume()',
    "flush": "flush_metrics()",
    "sync": 'sync_metrics_from_file("job-456", Path("./metrics/job-456_metrics.jsonl"), session)',
}


@pytest_asyncio.fixture
async def platform(kafka_settings, database_url, tmp_path) -> AsyncIterator[dict[str, Any]]:
    receiver = await Receiver().start()
    config = tmp_path / "diagnostics.json"
    config.write_text(
        json.dumps(
            {
                "default": {
                    "alerts": {
                        "channels": [
                            {"name": "hook", "kind": "webhook", "url": receiver.url + "/a"}
                        ]
                    }
                }
            }
        )
    )
    running = [
        services.orchestrator(
            kafka_settings, tmp_path / "orchestrator.log", database_url=database_url
        ),
        services.ingest(kafka_settings, database_url, tmp_path / "ingest.log"),
        services.agent(
            kafka_settings,
            tmp_path / "agent.log",
            name="seed",
            work_dir=tmp_path / "agent",
            cwd=ROOT,
        ),
    ]
    for service in running:
        service.start()
    try:
        for service in running:
            await service.wait_ready()
        env = services.kafka_env(kafka_settings, database_url)
        env["POSTTRAIN_DIAGNOSTICS_CONFIG"] = str(config)
        env["POSTTRAIN_SPILL_DIR"] = str(tmp_path / "spill")
        env["SEED_STAGES"] = json.dumps(STAGES)
        (tmp_path / "work").mkdir()
        yield {"env": env, "cwd": tmp_path / "work", "receiver": receiver, "logs": running}
    finally:
        services.stop_all(running)
        await receiver.stop()


async def run_snippet(platform: dict[str, Any], body: str, timeout: float = 300) -> str:
    # In a thread: the loop serves the receiver (Slack's stand-in) while the snippet runs.
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", PRELUDE + "import json\n" + body],
        env=platform["env"],
        cwd=platform["cwd"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{body}\n--- stderr:\n{done.stderr[-4000:]}"
    return done.stdout


def lines(out: str, prefix: str) -> list[list[str]]:
    return [line[len(prefix) :].split() for line in out.splitlines() if line.startswith(prefix)]


async def test_the_seeds_examples_run_as_written(platform):
    # The pipeline: planned in four layers, run to the end, every stage with its unit of work.
    out = await run_snippet(platform, PIPELINE)
    assert "Execution plan: 4 layers" in out
    assert lines(out, "root task:") == [["pipeline-001"]]
    assert lines(out, "pipeline:") == [["succeeded", "pipeline-001"]], out
    stages = {fields[0]: fields for fields in lines(out, "stage:")}
    assert set(stages) == {"preprocess", "train_sft", "train_rl_1", "train_rl_2", "evaluate"}
    for name, fields in stages.items():
        assert fields[1] == "succeeded"
        assert fields[2] == f"pipeline-001:{name}:1"  # the RunStage command's id
    # The training stages' metrics, read through the seed's job_uuid, as m.loss.
    metrics = {fields[0]: fields for fields in lines(out, "metrics:")}
    assert {"sft-job-001", "zzz1", "zzz2"} <= set(metrics)
    assert metrics["sft-job-001"][1] == "10"
    assert float(metrics["sft-job-001"][2]) > 0

    # Mode A: the callback's points, the monitor, the diagnosis of the NaN, and the alert.
    out = await run_snippet(platform, CALLBACK)
    assert lines(out, "latest:") == [["40", "0.05"]]
    assert lines(out, "step 30:") == [["True", "nan_inf"]]
    assert lines(out, "job:")[0][:2] == ["True", "nan_inf"]
    alerts = platform["receiver"].bodies("/a")
    assert [(a["job_uuid"], a["anomaly"]) for a in alerts] == [("job-123", "nan_inf")]

    # Mode B: the file a remote trainer writes, re-synced by the one-liner (twice: no duplicate).
    await run_snippet(platform, FILE_WRITER)
    assert (platform["cwd"] / "metrics" / "job-456_metrics.jsonl").exists()
    for _ in range(2):
        await run_snippet(platform, ONE_LINERS["sync"])
    out = await run_snippet(platform, 'print(len(get_latest_metrics("job-456", limit=100)))')
    assert out.split() == ["25"]

    # The other one-liners: status printed, a resume and a flush that run and return.
    out = await run_snippet(platform, ONE_LINERS["status"])
    assert "'status': 'succeeded'" in out and "'celery_task_id': 'pipeline-001'" in out
    await run_snippet(platform, ONE_LINERS["resume"])
    await run_snippet(platform, ONE_LINERS["flush"])
