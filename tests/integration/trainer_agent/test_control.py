"""Control commands reach a real training run at its next step boundary, and each one is
reported as ActionApplied with the step it was applied at."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from posttrain.events.messages import (
    AdjustLearningRate,
    CancelStage,
    ForceCheckpoint,
    PauseStage,
    ResumeStage,
    RollbackStage,
)
from posttrain.events.topics import Topic
from tests.integration.trainer_agent.conftest import control_for, tiny_sft
from tests.integration.trainer_agent.topics import TopicReader, points_by_key, reports_for

pytestmark = pytest.mark.integration


def _files(directory: Path) -> set[str]:
    return {f.name for f in directory.iterdir()} if directory.is_dir() else set()


def _applied(messages, run, action_id):
    return [
        m
        for m in reports_for(messages, run.command_id, "ActionApplied")
        if m.action_id == action_id
    ]


async def test_pause_resume_checkpoint_learning_rate_and_cancel(start_agent, kafka_settings):
    agent = await start_agent()
    # No periodic checkpoints: the retry below must find the forced one as the job's last.
    run = agent.run_stage(
        "train_model", {"config": tiny_sft(max_steps=5000, save_steps=0)}, stage="ctl"
    )
    async with (
        TopicReader(kafka_settings, Topic.STAGE_REPORTS) as reports,
        TopicReader(kafka_settings, Topic.METRICS) as metrics,
    ):
        await agent.send(run)
        await metrics.wait(
            lambda ms: any(p.step >= 10 for p in points_by_key(ms, run.job_id).values()),
            timeout=120,
        )

        # Pause: a checkpoint (with optimizer and scheduler state), then the process stops.
        await agent.send(control_for(PauseStage, run, "pause-1"))
        [paused] = await reports.wait(lambda ms: reports_for(ms, run.command_id, "StagePaused"))
        p = paused.step
        assert p >= 10
        checkpoint = Path(paused.checkpoint)
        assert checkpoint.name == f"checkpoint-{p}"
        assert {"optimizer.pt", "scheduler.pt", "trainer_state.json"} <= _files(checkpoint)
        [pause_applied] = _applied(reports.messages(), run, "pause-1")
        assert pause_applied.action == "pause" and pause_applied.step == p
        # The stage's points were flushed before it reported the pause: up to step p, no further.
        before = await metrics.wait(
            lambda ms: (
                any(pt.step == p for pt in points_by_key(ms, run.job_id).values())
                and points_by_key(ms, run.job_id)
            )
        )
        assert max(pt.step for pt in before.values()) == p  # nothing trained past the pause
        first_source = {source for source, _ in before}

        # While paused: a learning-rate cut and a checkpoint request wait for the next step.
        await agent.send(control_for(AdjustLearningRate, run, "lr-1", factor=0.1))
        await agent.send(control_for(ForceCheckpoint, run, "ckpt-1"))
        await agent.send(control_for(ResumeStage, run, "resume-1"))
        await reports.wait(
            lambda ms: _applied(ms, run, "lr-1") and _applied(ms, run, "ckpt-1"), timeout=60
        )
        [resumed] = _applied(reports.messages(), run, "resume-1")
        [lr_applied] = _applied(reports.messages(), run, "lr-1")
        [ckpt_applied] = _applied(reports.messages(), run, "ckpt-1")
        assert resumed.step == p
        # Sent at step p (the run stood there), applied at the next boundary: step p + 1.
        assert lr_applied.step == ckpt_applied.step == p + 1
        assert lr_applied.details["factor"] == 0.1
        # The checkpoint is reported once written, a moment after the action.
        saved = await reports.wait(
            lambda ms: [
                m
                for m in reports_for(ms, run.command_id, "CheckpointSaved")
                if m.reason == "forced"
            ]
        )
        assert [m.step for m in saved] == [p + 1] and _files(Path(saved[0].path))

        # The resumed run continues at the next step, with the optimizer state it had.
        series = await metrics.wait(
            lambda ms: (
                {
                    pt.step: pt
                    for (source, _), pt in points_by_key(ms, run.job_id).items()
                    if source not in first_source and pt.step >= p + 2
                }
                and {
                    pt.step: pt
                    for (source, _), pt in points_by_key(ms, run.job_id).items()
                    if source not in first_source
                }
            ),
            timeout=60,
        )
        assert min(series) == p + 1
        assert series[p + 1].learning_rate == pytest.approx(3e-3)
        assert series[p + 2].learning_rate == pytest.approx(3e-4)  # the next step shows it
        first_loss = min(before.values(), key=lambda pt: pt.step).loss
        assert series[p + 1].loss < 0.5 * first_loss  # not a restart from scratch

        # ForceCheckpoint while training runs: the checkpoint is at the step it was applied.
        await agent.send(control_for(ForceCheckpoint, run, "ckpt-2"))
        [applied] = await reports.wait(lambda ms: _applied(ms, run, "ckpt-2"), timeout=60)
        checkpoints = await reports.wait(
            lambda ms: [
                m
                for m in reports_for(ms, run.command_id, "CheckpointSaved")
                if m.step == applied.step
            ]
        )
        assert Path(checkpoints[0].path).name == f"checkpoint-{applied.step}"

        # Cancel: the run stops at its next step and the stage fails as cancelled.
        await agent.send(control_for(CancelStage, run, "cancel-1"))
        [failed] = await reports.wait(lambda ms: reports_for(ms, run.command_id, "StageFailed"))
        assert failed.kind == "cancelled"
        [cancel_applied] = _applied(reports.messages(), run, "cancel-1")
        assert cancel_applied.step > applied.step

        # A retry (a new attempt of the same job) resumes from the job's last checkpoint.
        last = applied.step
        retry = agent.run_stage(
            "train_model",
            {"config": tiny_sft(max_steps=last + 10, save_steps=0)},
            stage="ctl",
            attempt=2,
        )
        await agent.send(retry)
        [done] = await reports.wait(lambda ms: reports_for(ms, retry.command_id, "StageSucceeded"))
        assert done.outputs["resumed_from"].endswith(f"checkpoint-{last}")
        retried = await metrics.wait(
            lambda ms: (
                (
                    pts := [
                        pt
                        for m in ms
                        if getattr(m, "attempt", None) == 2 and m.job_id == run.job_id
                        for pt in m.points
                    ]
                )
                and len(pts) == 10
                and pts
            )
        )
    assert sorted(pt.step for pt in retried) == list(range(last + 1, last + 11))


def _refused(messages, action_id):
    return [m for m in messages if m.TYPE == "ActionRefused" and m.action_id == action_id]


async def test_controls_a_stage_cannot_apply_are_reported_refused(start_agent, kafka_settings):
    """A command stage has no step boundary: pause, checkpoint, learning rate and rollback are
    refused on stage.reports with the reason (not only written in the stage's log); a control
    for a stage this agent does not run, or a resume of a running one, is refused too."""
    agent = await start_agent()
    sleeper = "import time\nfor _ in range(600): time.sleep(0.1)"
    run = agent.run_stage("command", {"argv": [sys.executable, "-c", sleeper]}, stage="verl")
    async with TopicReader(kafka_settings, Topic.STAGE_REPORTS) as reports:
        await agent.send(run)
        await reports.wait(lambda ms: reports_for(ms, run.command_id, "StageStarted"), timeout=60)
        await agent.send(control_for(PauseStage, run, "pause-1"))
        await agent.send(control_for(ForceCheckpoint, run, "ckpt-1"))
        await agent.send(control_for(AdjustLearningRate, run, "lr-1", factor=0.1))
        await agent.send(control_for(RollbackStage, run, "rb-1", step=3))
        await agent.send(control_for(ResumeStage, run, "resume-1"))
        ghost = run.model_copy(update={"command_id": "pipe-1:ghost:1", "stage": "ghost"})
        await agent.send(control_for(PauseStage, ghost, "pause-ghost"))
        ids = ["pause-1", "ckpt-1", "lr-1", "rb-1", "resume-1", "pause-ghost"]
        refused = await reports.wait(
            lambda ms: all(_refused(ms, i) for i in ids) and {i: _refused(ms, i) for i in ids},
            timeout=60,
        )
        await agent.send(control_for(CancelStage, run, "cancel-1"))
        [failed] = await reports.wait(lambda ms: reports_for(ms, run.command_id, "StageFailed"))
    assert failed.kind == "cancelled"
    assert _applied(reports.messages(), run, "cancel-1")
    assert all(len(r) == 1 for r in refused.values()), refused
    for action_id, action in [
        ("pause-1", "pause"),
        ("ckpt-1", "force_checkpoint"),
        ("lr-1", "adjust_learning_rate"),
        ("rb-1", "rollback"),
    ]:
        [r] = refused[action_id]
        assert (r.action, r.agent_id, r.command_id) == (action, agent.name, run.command_id)
        assert "no step boundary" in r.reason, r.reason
    [resume] = refused["resume-1"]
    assert (resume.action, resume.reason) == ("resume", "not paused")
    [ghost_refusal] = refused["pause-ghost"]
    assert ghost_refusal.reason == "no such stage on this agent"
    assert ghost_refusal.stage == "ghost" and ghost_refusal.job_id is None
