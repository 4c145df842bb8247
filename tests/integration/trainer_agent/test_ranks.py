"""A training stage with two ranks (torchrun's launcher, gloo on CPU): one metrics stream from
rank 0, one outcome, and every control command applied by both ranks at the same step, as each
rank's own witness file shows."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

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
from posttrain.trainer_agent.stage_files import CONTROL
from tests.integration.trainer_agent.conftest import control_for, tiny_sft
from tests.integration.trainer_agent.topics import TopicReader, points_by_key, reports_for
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

WITNESS = "tests.integration.trainer_agent.stage_functions:RankWitness"
FAULTS = "posttrain.testing.hf_faults:Inject"
LR = 3e-3
STEPS = 150


def _two_ranks(
    witness: Path, *, faults: dict[str, Any] | None = None, **overrides: Any
) -> dict[str, Any]:
    witness.mkdir(parents=True, exist_ok=True)
    callbacks = [{"entrypoint": WITNESS, "kwargs": {"path": str(witness)}}]
    if faults is not None:
        callbacks.append({"entrypoint": FAULTS, "kwargs": faults})
    return tiny_sft(
        nproc_per_node=2,
        batch_size=16,
        save_steps=0,
        callbacks=callbacks,
        **overrides,
    )


def _witness(directory: Path) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for rank in (0, 1):
        path = directory / f"witness-rank{rank}.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        out[rank] = [json.loads(line) for line in lines if line.strip()]
    return out


def _applied(messages: list[Any], run: Any, action_id: str) -> list[Any]:
    return [
        m
        for m in reports_for(messages, run.command_id, "ActionApplied")
        if m.action_id == action_id
    ]


def _lr_at(records: list[dict[str, Any]], step: int) -> float:
    [lr] = {r["lr"] for r in records if r["event"] == "step" and r["step"] == step}
    return float(lr)


async def test_two_ranks_report_one_metrics_stream_and_one_outcome(
    start_agent, kafka_settings, tmp_path
):
    agent = await start_agent()
    witness = tmp_path / "witness"
    run = agent.run_stage("train_model", {"config": _two_ranks(witness, max_steps=6)})
    async with (
        TopicReader(kafka_settings, Topic.STAGE_REPORTS) as reports,
        TopicReader(kafka_settings, Topic.METRICS) as metrics,
    ):
        await agent.send(run)
        [done] = await reports.wait(
            lambda ms: reports_for(ms, run.command_id, "StageSucceeded"), timeout=120
        )
        points = await metrics.wait(
            lambda ms: len(points_by_key(ms, run.job_id)) >= 6 and points_by_key(ms, run.job_id)
        )
    # One stream: a single source (rank 0), each step once.
    assert len({source for source, _ in points}) == 1
    assert sorted(pt.step for pt in points.values()) == [1, 2, 3, 4, 5, 6]
    assert all(pt.loss is not None for pt in points.values())
    assert [m.TYPE for m in reports_for(reports.messages(), run.command_id)].count(
        "StageSucceeded"
    ) == 1
    assert done.outputs["steps"] == 6
    assert (Path(done.outputs["checkpoint"]) / "config.json").exists()
    # Both ranks trained every step, in two processes.
    ranks = _witness(witness)
    for rank in (0, 1):
        assert [r["step"] for r in ranks[rank] if r["event"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert {r["pid"] for r in ranks[0]}.isdisjoint({r["pid"] for r in ranks[1]})
    # Data-parallel: gradients are averaged across the ranks, so their weights stay equal, and
    # they change at every step.
    weights = [[r["weights"] for r in ranks[rank] if r["event"] == "step"] for rank in (0, 1)]
    assert weights[0] == weights[1]
    assert len(set(weights[0])) == 6


async def test_controls_apply_on_both_ranks_at_the_same_step(start_agent, kafka_settings, tmp_path):
    agent = await start_agent()
    witness = tmp_path / "witness"
    run = agent.run_stage(
        "train_model", {"config": _two_ranks(witness, max_steps=5000)}, stage="ranks-ctl"
    )
    async with (
        TopicReader(kafka_settings, Topic.STAGE_REPORTS) as reports,
        TopicReader(kafka_settings, Topic.METRICS) as metrics,
    ):
        await agent.send(run)
        await metrics.wait(
            lambda ms: any(pt.step >= 3 for pt in points_by_key(ms, run.job_id).values()),
            timeout=120,
        )

        # A learning-rate cut and a forced checkpoint, sent together.
        await agent.send(control_for(AdjustLearningRate, run, "lr-1", factor=0.1))
        await agent.send(control_for(ForceCheckpoint, run, "ckpt-1"))
        await reports.wait(lambda ms: _applied(ms, run, "lr-1") and _applied(ms, run, "ckpt-1"))
        [lr_applied] = _applied(reports.messages(), run, "lr-1")
        [ckpt_applied] = _applied(reports.messages(), run, "ckpt-1")
        # Each at a step boundary of its own: sent together, they may reach the stage on either
        # side of one.
        s, c = lr_applied.step, ckpt_applied.step
        saved = await reports.wait(
            lambda ms: [
                m
                for m in reports_for(ms, run.command_id, "CheckpointSaved")
                if m.reason == "forced"
            ]
        )
        # Saved once (by rank 0), at the step both ranks agreed on.
        assert [m.step for m in saved] == [c]
        assert Path(saved[0].path).name == f"checkpoint-{c}"

        # Pause: both ranks stop at the same step, after the same checkpoint.
        await agent.send(control_for(PauseStage, run, "pause-1"))
        [paused] = await reports.wait(lambda ms: reports_for(ms, run.command_id, "StagePaused"))
        p = paused.step
        assert p > max(s, c)
        first = _witness(witness)
        for rank in (0, 1):
            records = first[rank]
            # Each rank's own optimizer had the old rate before step s and the new one from it.
            assert _lr_at(records, s - 1) == pytest.approx(LR)
            assert _lr_at(records, s) == pytest.approx(LR * 0.1)
            assert sorted(r["step"] for r in records if r["event"] == "save") == [c, p]
            assert max(r["step"] for r in records if r["event"] == "step") == p

        # Resume: both ranks go on from the pause's checkpoint, with the rate they had.
        await agent.send(control_for(ResumeStage, run, "resume-1"))
        await metrics.wait(
            lambda ms: any(pt.step >= p + 2 for pt in points_by_key(ms, run.job_id).values()),
            timeout=60,
        )
        await agent.send(control_for(CancelStage, run, "cancel-1"))
        [failed] = await reports.wait(lambda ms: reports_for(ms, run.command_id, "StageFailed"))
        assert failed.kind == "cancelled"
        [cancel_applied] = _applied(reports.messages(), run, "cancel-1")
        points = await metrics.wait(
            lambda ms: (
                any(pt.step == cancel_applied.step for pt in points_by_key(ms, run.job_id).values())
                and points_by_key(ms, run.job_id)
            )
        )

    after = _witness(witness)
    for rank in (0, 1):
        resumed = after[rank][len(first[rank]) :]
        assert (resumed[0]["event"], resumed[0]["step"]) == ("begin", p)
        assert resumed[1]["step"] == p + 1
        assert _lr_at(resumed, p + 1) == pytest.approx(LR * 0.1)
        last = [r for r in resumed if r["event"] == "step"][-1]
        assert last["step"] == cancel_applied.step and last["stop"]
    # Two launches, one stream each (rank 0's); no step twice within one, and none lost.
    sources: dict[str, list[int]] = {}
    for (source, _), pt in points.items():
        sources.setdefault(source, []).append(pt.step)
    assert len(sources) == 2
    before_pause, after_resume = sorted(sources.values(), key=min)
    assert sorted(before_pause) == list(range(1, p + 1))
    assert sorted(after_resume) == list(range(p + 1, max(after_resume) + 1))


async def test_a_failing_rank_fails_the_stage_and_stops_the_others(
    start_agent, kafka_settings, tmp_path
):
    agent = await start_agent()
    witness = tmp_path / "witness"
    config = _two_ranks(witness, max_steps=5000)
    config["callbacks"].append(
        {"entrypoint": f"{WITNESS.split(':')[0]}:FailOnRank", "kwargs": {"rank": 1, "step": 3}}
    )
    run = agent.run_stage("train_model", {"config": config})
    async with TopicReader(kafka_settings, Topic.STAGE_REPORTS) as reports:
        await agent.send(run)
        [failed] = await reports.wait(
            lambda ms: reports_for(ms, run.command_id, "StageFailed"), timeout=90
        )
    # The outcome is the rank that failed first, not the one torchrun stopped after it.
    assert failed.kind == "error"
    assert "rank 1 broke at step 3" in failed.error
    pids = {r["pid"] for records in _witness(witness).values() for r in records}
    assert len(pids) == 2
    assert not [pid for pid in pids if _running(pid)]


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


async def test_a_rollback_takes_both_ranks_back_to_the_same_checkpoint(
    start_agent, kafka_settings, tmp_path
):
    agent = await start_agent()
    witness = tmp_path / "witness"
    # Three checkpoints kept: checkpoint-8 is gone once checkpoint-20 is saved. The ranks wait
    # at step 11 until the rollback is in the stage's control file, so it is applied by step
    # 12 however fast the machine trains.
    release = tmp_path / "release"
    faults = {"release_file": str(release), "hold_at": 11}
    config = _two_ranks(witness, faults=faults, max_steps=5000)
    config.update(save_steps=4, save_total_limit=3)
    run = agent.run_stage("train_model", {"config": config}, stage="ranks-rb")
    async with (
        TopicReader(kafka_settings, Topic.STAGE_REPORTS) as reports,
        TopicReader(kafka_settings, Topic.METRICS) as metrics,
    ):
        await agent.send(run)
        await metrics.wait(
            lambda ms: any(pt.step >= 10 for pt in points_by_key(ms, run.job_id).values()),
            timeout=120,
        )
        await agent.send(control_for(RollbackStage, run, "rb-1", step=9))
        control = Path(agent.agent.journal.get(run.command_id).attempt_dir) / CONTROL
        await wait_for(
            lambda: control.exists() and "rb-1" in control.read_text(),
            timeout=60,
            what="the rollback handed to the stage",
        )
        release.touch()
        [applied] = await reports.wait(lambda ms: _applied(ms, run, "rb-1"))
        assert applied.details["to_step"] == 8
        assert applied.step <= 12
        f = applied.step
        # Training goes on from step 9 again, past where it was.
        await metrics.wait(
            lambda ms: (
                sum(pt.step == 9 for pt in points_by_key(ms, run.job_id).values()) == 2
                and any(pt.step > f + 1 for pt in points_by_key(ms, run.job_id).values())
            ),
            timeout=60,
        )
        await agent.send(control_for(CancelStage, run, "cancel-1"))
        await reports.wait(lambda ms: reports_for(ms, run.command_id, "StageFailed"))
    ranks = _witness(witness)
    sequences = [[r["step"] for r in ranks[rank] if r["event"] == "step"] for rank in (0, 1)]
    # Both ranks stepped through the same steps: up to f, back to 9, on from there.
    n = min(len(s) for s in sequences)
    assert sequences[0][:n] == sequences[1][:n]
    assert sequences[0][: f + 1] == [*range(1, f + 1), 9]
    # Both ranks hold the same weights at every step, those after the rollback included.
    weights = [[r["weights"] for r in ranks[rank] if r["event"] == "step"] for rank in (0, 1)]
    assert weights[0][:n] == weights[1][:n]


async def test_a_timeout_stops_every_rank(start_agent, kafka_settings, tmp_path):
    """The agent's SIGTERM reaches the stage process and its ranks (one process group): the
    stage fails as timed out and no rank is left running."""
    agent = await start_agent()
    witness = tmp_path / "witness"
    # Long enough for both ranks to start training on a loaded 2-core machine (they take 3-5 s
    # on an idle one), far shorter than the 5,000 steps.
    run = agent.run_stage(
        "train_model", {"config": _two_ranks(witness, max_steps=5000)}, timeout_s=15.0
    )
    async with TopicReader(kafka_settings, Topic.STAGE_REPORTS) as reports:
        await agent.send(run)
        [failed] = await reports.wait(
            lambda ms: reports_for(ms, run.command_id, "StageFailed"), timeout=60
        )
    assert failed.kind == "timeout"
    pids = {r["pid"] for records in _witness(witness).values() for r in records}
    assert len(pids) == 2  # both ranks were training when the deadline came
    assert not [pid for pid in pids if _running(pid)]


async def test_a_restarted_agent_reattaches_to_the_ranks_and_reports_once(
    start_agent, kafka_settings, tmp_path
):
    """The agent stops mid-stage (its stages go on) and a new one re-attaches: the ranks train
    once, rank 0's one stream is complete, and the outcome is reported once."""
    first = await start_agent(name="ranks-restart")
    witness = tmp_path / "witness"
    # The ranks wait at step 5 until the new agent is up: the restart happens mid-stage
    # however fast the machine trains the 150 steps.
    release = tmp_path / "release"
    faults = {"release_file": str(release), "hold_at": 5}
    run = first.run_stage(
        "train_model", {"config": _two_ranks(witness, faults=faults, max_steps=STEPS)}
    )
    async with (
        TopicReader(kafka_settings, Topic.STAGE_REPORTS) as reports,
        TopicReader(kafka_settings, Topic.METRICS) as metrics,
    ):
        await first.send(run)
        await metrics.wait(
            lambda ms: any(pt.step >= 3 for pt in points_by_key(ms, run.job_id).values()),
            timeout=120,
        )
        first.agent.stop()
        await asyncio.wait_for(first.agent.stopped.wait(), 30)
        attempt_dir = Path(first.agent.journal.get(run.command_id).attempt_dir)
        assert not (attempt_dir / "result-1.json").exists()  # the ranks still train
        await start_agent(name="ranks-restart")
        assert not (attempt_dir / "result-1.json").exists()  # re-attached to running ranks
        release.touch()
        [done] = await reports.wait(
            lambda ms: reports_for(ms, run.command_id, "StageSucceeded"), timeout=120
        )
        points = await metrics.wait(
            lambda ms: len(points_by_key(ms, run.job_id)) >= STEPS and points_by_key(ms, run.job_id)
        )
    assert done.outputs["steps"] == STEPS
    assert len({source for source, _ in points}) == 1
    assert sorted(pt.step for pt in points.values()) == list(range(1, STEPS + 1))
    for records in _witness(witness).values():
        assert [r["step"] for r in records if r["event"] == "begin"] == [0]
        assert [r["step"] for r in records if r["event"] == "step"] == list(range(1, STEPS + 1))
    assert len(reports_for(reports.messages(), run.command_id, "StageSucceeded")) == 1
