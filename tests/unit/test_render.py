"""What the command line prints, captured from rich to a string."""

from __future__ import annotations

import io
import math
from datetime import datetime

from rich.console import Console

from posttrain.render import (
    agents_table,
    anomaly_line,
    follow_view,
    history_table,
    metrics_chart,
    metrics_table,
    sparkline,
    status_view,
)

TRACEBACK = (
    'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
    "    boom()\nValueError: learning rate must be positive\n"
)


def text(renderable) -> str:
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def _status(**changes):
    stage = {
        "name": "sft",
        "status": "failed",
        "attempt": 2,
        "task_id": "p:sft:2",
        "agent_id": "gpu-1",
        "waiting_reason": None,
        "error": TRACEBACK,
        "job_id": "p:sft:2",
    }
    status = {
        "pipeline_uuid": "p",
        "name": "demo",
        "status": "failed",
        "errors": [],
        "layers": [["prep"], ["sft"]],
        "stages": [
            {**stage, "name": "prep", "status": "succeeded", "attempt": 1, "error": None},
            stage,
        ],
    }
    return {**status, **changes}


def test_status_is_one_line_per_stage_by_layer_with_an_error_as_one_line():
    lines = text(status_view(_status())).splitlines()
    assert lines[0] == "pipeline p (demo): failed"
    rows = [line for line in lines if "prep" in line or "sft" in line]
    assert len(rows) == 2
    assert rows[0].split()[:3] == ["0", "prep", "succeeded"]
    assert rows[1].split()[:4] == ["1", "sft", "failed", "2"]
    assert (
        rows[1]
        .rstrip()
        .endswith("ValueError: learning rate must be positive (more with --verbose)")
    )
    assert "boom()" not in "\n".join(lines)


def test_verbose_status_shows_the_whole_error_and_a_stale_read_model_says_so():
    full = text(status_view(_status(), verbose=True, stale="no live orchestrator"))
    assert "boom()" in full and "Traceback (most recent call last):" in full
    assert "[stale: no live orchestrator]" in full.splitlines()[0]


def test_metrics_table_is_in_step_order_and_a_chart_marks_non_finite_values_as_gaps():
    points = [
        {"step": 3, "loss": 0.5, "learning_rate": 1e-4},
        {"step": 1, "loss": 2.0, "learning_rate": 1e-4},
        {"step": 2, "loss": math.nan, "learning_rate": 1e-4},
    ]
    table = text(metrics_table(points)).splitlines()
    assert table[0].split() == ["step", "loss", "learning_rate"]
    assert [line.split()[0] for line in table[1:]] == ["1", "2", "3"]
    assert table[2].split()[1] == "nan"
    assert sparkline([2.0, math.nan, 0.5]) == "█ ▁"
    chart = text(metrics_chart(points, ["loss"]))
    assert "█ ▁" in chart and "steps 1..3" in chart


def test_an_anomaly_line_carries_its_actions():
    line = anomaly_line(
        {
            "step": 40,
            "anomaly_type": "gradient_explosion",
            "severity": "critical",
            "stage": "grpo",
            "message": "grad_norm 1e6 over 50x its median",
            "actions": [
                {"action": "adjust_learning_rate", "factor": 0.1, "status": "applied"},
                {"action": "pause", "status": "refused", "refusal": "stage already finished"},
            ],
        }
    )
    assert line.plain == (
        "step 40 gradient_explosion (critical) in grpo: grad_norm 1e6 over 50x its median"
        "  -> adjust_learning_rate (x0.1) applied  -> pause refused (stage already finished)"
    )


def test_the_follow_view_shows_stages_latest_metrics_and_anomalies():
    status = _status(status="running")
    status["stages"][1].update(status="running", error=None)
    view = text(
        follow_view(
            status,
            pipeline_id="p",
            latest={"sft": {"step": 120, "loss": 0.25, "learning_rate": 5e-5}},
            anomalies=[
                {"step": 7, "anomaly_type": "loss_spike", "severity": "warning", "message": "x"}
            ],
        )
    )
    assert "pipeline p (demo): running" in view
    assert "latest metrics" in view
    metrics_row = next(
        line for line in view.splitlines() if line.startswith("sft") and "120" in line
    )
    assert metrics_row.split() == ["sft", "120", "0.25", "5e-05"]
    assert "step 7 loss_spike (warning): x" in view
    waiting = text(follow_view(None, pipeline_id="p"))
    assert "waiting for the orchestrator" in waiting


def test_history_and_agents_tables():
    history = text(
        history_table(
            [
                {
                    "seq": 3,
                    "at": datetime(2026, 12, 2, 10, 0, 0),
                    "type": "StageFailed",
                    "stage": "sft",
                    "attempt": 1,
                    "summary": "sft failed: oom",
                }
            ]
        )
    )
    assert "2026-12-02 10:00:00" in history and "StageFailed" in history
    assert "sft failed: oom" in history
    agents = text(
        agents_table(
            [
                {
                    "agent_id": "gpu-1",
                    "alive": True,
                    "gpus": 8,
                    "gpus_free": 6,
                    "slots": 2,
                    "labels": {"zone": "a"},
                    "running": [{"pipeline_uuid": "p", "stage": "sft", "attempt": 1}],
                    "last_heartbeat_at": datetime(2026, 12, 2, 10, 0, 1),
                }
            ]
        )
    )
    row = next(line for line in agents.splitlines() if line.startswith("gpu-1"))
    assert row.split()[:5] == ["gpu-1", "yes", "6/8", "2", "p:sft#1"]
    assert "zone=a" in row


def test_staleness_counts_a_commit_marker_as_up_to_date():
    from posttrain.liveness import staleness

    live = {"members": 1, "terminal": False}
    assert staleness(ends={0: 10, 1: 0}, projected={0: 9}, **live) is None
    assert staleness(ends={0: 10, 1: 0}, projected={0: 10}, **live) is None
    assert staleness(ends={0: 10, 1: 5}, projected={0: 8}, **live) == (
        "the read model is behind the log in 2 partition(s)"
    )
    dead = staleness(members=0, ends={0: 3}, projected={0: 2}, terminal=False)
    assert dead == "no live orchestrator (start one with `posttrain orchestrator`)"
    assert staleness(members=0, ends={0: 3}, projected={0: 2}, terminal=True) is None


def test_a_running_jobs_latest_point_as_one_line():
    from posttrain.follow import metrics_line

    line = metrics_line("sft", {"step": 120, "loss": 0.25, "learning_rate": 5e-5, "timestamp": 1.0})
    assert line.plain == "sft step 120: loss 0.25, learning_rate 5e-05"
