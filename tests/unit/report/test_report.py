"""The run report drawn from recorded points: the page and one PNG per training stage exist and
name each stage, anomalies and actions are listed at their steps, the evaluation table and the
verdict against the SFT model say what the figures say."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from posttrain.events.messages.metrics import MetricPoint
from posttrain.report import EvaluationRow, RunReport, StageRun, improvements, write_report
from posttrain.report.charts import chart_name
from posttrain.report.collect import chart_series, evaluation_rows, stage_markers

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _points(steps: int, **fields: float) -> list[dict[str, object]]:
    """Recorded points as the metrics ingest's queries return them (MetricPoint dumps)."""
    return [
        MetricPoint(
            step=s, timestamp=1e9 + s, **{k: v / (s + 1) for k, v in fields.items()}
        ).model_dump()
        for s in range(1, steps + 1)
    ]


def _anomaly(step: int, actions: list[dict[str, object]]) -> dict[str, object]:
    """An anomaly as the diagnostics recorder's queries return it (``to_dict()``)."""
    return {
        "step": step,
        "anomaly_type": "grad_spike",
        "severity": "warning",
        "message": "gradient norm 9.1x its median",
        "actions": actions,
    }


def _report(tmp: Path) -> RunReport:
    sft_ck, grpo_ck, dpo_ck = (str(tmp / j / "final") for j in ("job-sft", "job-grpo", "job-dpo"))
    stages_doc = [
        {"name": "preprocess", "outputs": {"dataset": "/d"}},
        {"name": "train_sft", "outputs": {"checkpoint": sft_ck}},
        {"name": "train_grpo", "outputs": {"checkpoint": grpo_ck}},
        {"name": "train_dpo", "outputs": {"checkpoint": dpo_ck}},
        {
            "name": "evaluate",
            "outputs": {
                "results": [
                    {"model": sft_ck, "eval_accuracy": 0.5, "reward_mean": 0.7, "eval_loss": 0.9},
                    {"model": grpo_ck, "eval_accuracy": 0.7, "reward_mean": 0.8, "eval_loss": 1.0},
                    {"model": dpo_ck, "eval_accuracy": 0.5, "reward_mean": 0.75},
                ]
            },
        },
    ]
    grpo_points = _points(20, loss=0.1, reward_mean=0.5, kl_divergence=0.01, grad_norm=2.0)
    grpo_points.append(
        MetricPoint(step=21, timestamp=1e9 + 21, loss=math.nan, grad_norm=50.0).model_dump()
    )
    action = {"action": "adjust_learning_rate", "status": "applied", "applied_step": 12}
    stages = [
        StageRun("preprocess", "preprocess_dataset", "succeeded"),
        StageRun(
            "train_sft",
            "train_model",
            "succeeded",
            agent_id="demo-cpu-1",
            seconds=6.5,
            series=chart_series(_points(30, loss=2.0, grad_norm=1.0)),
        ),
        StageRun(
            "train_grpo",
            "train_model",
            "succeeded",
            agent_id="demo-cpu-2",
            series=chart_series(grpo_points),
            markers=stage_markers([_anomaly(10, [action])]),
        ),
        StageRun(
            "train_dpo",
            "train_model",
            "succeeded",
            series=chart_series(_points(15, loss=0.7, reward_mean=0.2, grad_norm=1.5)),
        ),
        # One point per evaluated model: a table, not a chart.
        StageRun(
            "evaluate",
            "run_evaluation",
            "succeeded",
            series=chart_series(_points(3, loss=0.9, reward_mean=0.7)),
        ),
    ]
    return RunReport(
        pipeline_id="demo-1234",
        name="arithmetic-posttrain",
        status="succeeded",
        stages=stages,
        evaluation=evaluation_rows(stages_doc),
        baseline="train_sft",
        web_url="http://127.0.0.1:8080/#/pipelines/demo-1234",
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunReport, Path]:
    """The report and its page, drawn once for the module (matplotlib is slow to draw)."""
    tmp = tmp_path_factory.mktemp("report")
    report = _report(tmp)
    return report, write_report(report, tmp / "report")


def test_report_writes_the_page_and_a_chart_per_training_stage(
    written: tuple[RunReport, Path],
) -> None:
    _, page = written
    tmp_path = page.parent.parent
    assert page == tmp_path / "report" / "index.html"
    text = page.read_text()
    for stage in ("preprocess", "train_sft", "train_grpo", "train_dpo", "evaluate"):
        assert f"<td>{stage}</td>" in text
    for stage in ("train_sft", "train_grpo", "train_dpo"):
        png = tmp_path / "report" / chart_name(stage)
        assert png.read_bytes().startswith(PNG_MAGIC), stage
        assert f'src="{stage}.png"' in text
    # Stages without a charted point, and the evaluation, have no chart.
    assert sorted(p.name for p in (tmp_path / "report").glob("*.png")) == [
        "train_dpo.png",
        "train_grpo.png",
        "train_sft.png",
    ]
    assert "http://127.0.0.1:8080/#/pipelines/demo-1234" in text


def test_report_lists_anomalies_and_actions_at_their_steps(
    written: tuple[RunReport, Path],
) -> None:
    report, page = written
    grpo = next(s for s in report.stages if s.name == "train_grpo")
    assert [(m.step, m.kind) for m in grpo.markers] == [(10, "anomaly"), (12, "action")]
    # The NaN loss is not charted as a value; the finite grad norm of the same step is.
    assert grpo.series["loss"][-1][0] == 20
    assert grpo.series["grad_norm"][-1] == (21, 50.0)

    text = page.read_text()
    assert "step 10: anomaly grad_spike (warning)" in text
    assert "step 12: action adjust_learning_rate applied" in text


def test_evaluation_rows_are_named_by_stage_and_compared_with_sft(
    written: tuple[RunReport, Path],
) -> None:
    report, page = written
    assert [(r.stage, r.accuracy, r.reward) for r in report.evaluation] == [
        ("train_sft", 0.5, 0.7),
        ("train_grpo", 0.7, 0.8),
        ("train_dpo", 0.5, 0.75),
    ]
    verdict = {i.stage: i.improved for i in improvements(report.evaluation, "train_sft")}
    # DPO's reward is higher but its accuracy only equal: not an improvement.
    assert verdict == {"train_grpo": True, "train_dpo": False}

    text = page.read_text()
    assert '<li class="ok">train_grpo: accuracy 0.70 vs 0.50' in text
    assert '<li class="bad">train_dpo: accuracy 0.50 vs 0.50' in text
    assert "<td>0.70</td><td>0.800</td><td>1.000</td>" in text


def test_no_verdict_without_the_baseline_evaluated() -> None:
    rows = [EvaluationRow("train_grpo", "/m", 0.9, 0.9, None)]
    assert improvements(rows, "train_sft") == []
