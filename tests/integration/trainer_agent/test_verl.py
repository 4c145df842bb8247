"""A train_model stage on verl (``algorithm: ppo``), run by a real agent on the real broker with
the stand-in for verl's main_ppo (``posttrain.testing.verl_standin``): its file logger becomes
canonical metric points; a pause stops it and the resume goes on from its last checkpoint; a
learning-rate change relaunches it from its last checkpoint with the new rate."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from posttrain.events.messages import (
    AdjustLearningRate,
    ForceCheckpoint,
    PauseStage,
    Resources,
    ResumeStage,
)
from posttrain.events.topics import Topic
from tests.integration.trainer_agent.conftest import TRAIN, control_for
from tests.integration.trainer_agent.topics import (
    TopicReader,
    finished,
    points_by_key,
    reports_for,
)

pytestmark = pytest.mark.integration

SAVE_STEPS = 5
MAX_STEPS = 300


def _answered(messages, run, action_id):
    return [
        m
        for m in reports_for(messages, run.command_id)
        if m.TYPE in ("ActionApplied", "ActionRefused") and m.action_id == action_id
    ]


def _by_source(messages, job_id):
    """{source: {step: point}}: one source per launch of verl (one file each)."""
    out: dict[str, dict[int, object]] = {}
    for (source, _), point in points_by_key(messages, job_id).items():
        out.setdefault(source, {})[point.step] = point
    return out


async def test_ppo_on_verl_pause_resume_and_learning_rate_change(start_agent, kafka_settings):
    agent = await start_agent(
        gpus=1, stage_env=(("OMP_NUM_THREADS", "1"), ("VERL_STANDIN_STEP_S", "0.03"))
    )
    config = {
        "algorithm": "ppo",
        "model_path": "/models/tiny",  # the stand-in loads no model
        "train_data_path": TRAIN,
        "kl_coef": 0.01,
        "learning_rate": 1e-6,
        "save_steps": SAVE_STEPS,
        "max_steps": MAX_STEPS,
        "verl_command": [sys.executable, "-m", "posttrain.testing.verl_standin"],
    }
    run = agent.run_stage(
        "train_model", {"config": config}, stage="ppo", resources=Resources(gpus=1)
    )
    async with (
        TopicReader(kafka_settings, Topic.STAGE_REPORTS) as reports,
        TopicReader(kafka_settings, Topic.METRICS) as metrics,
    ):
        await agent.send(run)
        await metrics.wait(
            lambda ms: any(
                p.step >= 2 * SAVE_STEPS + 2 for p in points_by_key(ms, run.job_id).values()
            ),
            timeout=60,
        )
        [first] = _by_source(metrics.messages(), run.job_id).values()
        # verl's names became canonical fields (80 rows, batch 8: 10 steps an epoch).
        point = first[12]
        assert point.policy_loss == pytest.approx(1 / 12**0.5) == point.loss
        assert point.learning_rate == 1e-6 and point.kl_divergence == pytest.approx(0.012)
        assert point.reward_mean == pytest.approx(1 - 1 / 12**0.5) and point.epoch == 1.0
        assert point.custom["training/global_step"] == 12

        # verl cannot save on demand: refused on the record, with the reason.
        await agent.send(control_for(ForceCheckpoint, run, "ckpt-1"))
        [refused] = await reports.wait(lambda ms: _answered(ms, run, "ckpt-1"))
        assert refused.TYPE == "ActionRefused" and "save_freq" in refused.reason

        # Pause: verl is stopped; the stage stands at its last checkpoint.
        await agent.send(control_for(PauseStage, run, "pause-1"))
        [paused] = await reports.wait(lambda ms: reports_for(ms, run.command_id, "StagePaused"))
        p = paused.step
        assert p >= 2 * SAVE_STEPS and p % SAVE_STEPS == 0
        assert Path(paused.checkpoint).name == f"global_step_{p}"
        assert paused.resume_checkpoint == paused.checkpoint
        assert (Path(paused.checkpoint) / "actor" / "state.json").is_file()
        [pause_applied] = _answered(reports.messages(), run, "pause-1")
        assert pause_applied.TYPE == "ActionApplied" and pause_applied.step == p
        saved = {m.step for m in reports_for(reports.messages(), run.command_id, "CheckpointSaved")}
        assert set(range(SAVE_STEPS, p + 1, SAVE_STEPS)) <= saved

        # Resume: verl starts again from global_step_p and goes on at p + 1, not at 1.
        await agent.send(control_for(ResumeStage, run, "resume-1"))
        series = await metrics.wait(
            lambda ms: (
                len(s := _by_source(ms, run.job_id)) == 2
                and max(list(s.values())[1], default=0) >= p + 2 * SAVE_STEPS
                and s
            ),
            timeout=60,
        )
        resumed = list(series.values())[1]
        assert min(resumed) == p + 1
        assert resumed[p + 1].learning_rate == 1e-6
        [resume_applied] = await reports.wait(lambda ms: _answered(ms, run, "resume-1"))
        assert resume_applied.TYPE == "ActionApplied" and resume_applied.step == p

        # A learning-rate change: verl relaunched from its last checkpoint with the new rate.
        await agent.send(control_for(AdjustLearningRate, run, "lr-1", factor=0.1))
        [lr_applied] = await reports.wait(lambda ms: _answered(ms, run, "lr-1"), timeout=60)
        assert lr_applied.TYPE == "ActionApplied", lr_applied
        q = lr_applied.step
        assert q > p and q % SAVE_STEPS == 0
        assert lr_applied.details["learning_rate"] == pytest.approx(1e-7)
        assert Path(lr_applied.details["relaunched_from"]).name == f"global_step_{q}"

        third = await metrics.wait(
            lambda ms: (
                len(s := _by_source(ms, run.job_id)) == 3
                and max(list(s.values())[2]) >= q + SAVE_STEPS + 1
                and list(s.values())[2]
            ),
            timeout=60,
        )
        assert min(third) == q + 1
        assert all(pt.learning_rate == pytest.approx(1e-7) for pt in third.values())

        # A second pause and resume: the new rate holds in the next launch of the stage.
        await agent.send(control_for(PauseStage, run, "pause-2"))
        paused_again = await reports.wait(
            lambda ms: len(p := reports_for(ms, run.command_id, "StagePaused")) == 2 and p[1]
        )
        p2 = paused_again.step
        assert p2 > q and p2 % SAVE_STEPS == 0
        await agent.send(control_for(ResumeStage, run, "resume-2"))
        done = await reports.wait(lambda ms: finished(ms, run.command_id), timeout=60)
        assert done.TYPE == "StageSucceeded", done
        assert Path(done.outputs["checkpoint"]).name == f"global_step_{MAX_STEPS}"
        assert done.outputs["learning_rate"] == pytest.approx(1e-7)
        assert done.outputs["resumed_from"] == paused_again.checkpoint
        series = await metrics.wait(
            lambda ms: (
                len(s := _by_source(ms, run.job_id)) == 4 and MAX_STEPS in list(s.values())[3] and s
            ),
            timeout=30,
        )
    last = list(series.values())[3]
    assert min(last) == p2 + 1 and max(last) == MAX_STEPS
    assert all(pt.learning_rate == pytest.approx(1e-7) for pt in last.values())
    # Every step up to the end was logged; only the steps after each stop's checkpoint twice.
    steps = [step for launch in series.values() for step in launch]
    assert set(steps) == set(range(1, MAX_STEPS + 1))
