"""The closed loop on the real stack: a trainer agent runs real torch training, the diagnostics
stream watches its metrics, the orchestrator turns the stream's requests into agent commands,
and the agent applies them at the next step boundary."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from posttrain.events.topics import Topic
from posttrain.orchestrator.client import PipelineExecutor
from posttrain.orchestrator.shell.service import Orchestrator
from posttrain.testing import services
from posttrain.testing.invariants import read_topic
from posttrain.testing.orchestrator import read_log
from tests.waiting import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]
ENTRY = "posttrain.testing.training:run"


def stage(name: str, **kwargs: Any) -> dict[str, Any]:
    return {
        "name": name,
        "task": "python",
        "params": {"config": {"entrypoint": ENTRY, "kwargs": kwargs}},
    }


async def test_nan_run_is_paused_and_exploding_gradient_gets_its_learning_rate_cut(
    kafka_settings, tmp_path, run_id
):
    agent = services.agent(
        kafka_settings,
        tmp_path / "agent.log",
        name="closed-loop",
        work_dir=tmp_path / "agent",
        cwd=ROOT,
    ).start()
    stream = services.diagnostics(kafka_settings, tmp_path / "diagnostics.log").start()
    stop = asyncio.Event()
    orchestrator = Orchestrator(kafka_settings, tick_interval_s=0.2, session_timeout_ms=2000)
    await orchestrator.start()
    task = asyncio.create_task(orchestrator.run(stop))
    # Every service says when it reads what it is sent: nothing is submitted before.
    await asyncio.gather(agent.wait_ready(), stream.wait_ready())
    await wait_for(
        lambda: orchestrator.stats.assigned, timeout=60, what="the orchestrator's partitions"
    )
    try:
        await PipelineExecutor(run_id, settings=kafka_settings).aexecute(
            [
                stage("nan_run", nan_at=30, step_s=1.5, steps=200),
                # A 1000x kick at step 30: the weights it throws off keep the gradient high for
                # many steps (the rule wants a level, three high steps of five).
                stage("explode_run", spike_at=30, step_s=1.0, steps=45),
            ]
        )

        async def both_settled():
            events = await read_log(kafka_settings)
            paused = [e for e in events if e.type == "StagePaused"]
            finished = [
                e for e in events if e.type == "StageSucceeded" and e.data.stage == "explode_run"
            ]
            return (paused, finished, events) if paused and finished else None

        paused, _, events = await wait_for(
            both_settled,
            timeout=240,
            interval=1.0,
            what="the NaN run paused and the other finished",
        )
    finally:
        stop.set()
        await task
        await orchestrator.stop()
        services.stop_all([stream, agent])

    # Every point the runs reported, up to the topic's end offsets: the services are stopped,
    # so nothing more is on its way.
    points = {job: {} for job in (f"{run_id}.nan_run", f"{run_id}.explode_run")}
    for _, envelope in await read_topic(kafka_settings, Topic.METRICS):
        if envelope.data.job_id in points:
            for p in envelope.data.points:
                points[envelope.data.job_id][p.step] = p

    # NaN from step 30 on: the platform paused the run (with a checkpoint) within two steps.
    actions = [e.data for e in events if e.type == "ActionRequested"]
    assert any(a.stage == "nan_run" and a.action == "pause" for a in actions), actions
    assert paused[0].data.stage == "nan_run" and paused[0].data.checkpoint
    assert paused[0].data.step <= 30 + 2, paused[0].data
    # The loop skips non-finite steps, so the weights stayed good: the checkpoint is marked for
    # its loss only, and it is the one a resume goes on from.
    assert paused[0].data.non_finite == ["loss"]
    assert paused[0].data.resume_checkpoint == paused[0].data.checkpoint
    # The gradient exploded at step 30: the learning rate was cut x0.1, visible in the metrics.
    cut = [
        e.data
        for e in events
        if e.type == "ActionApplied"
        and e.data.stage == "explode_run"
        and e.data.action == "adjust_learning_rate"
    ]
    assert len(cut) == 1, cut
    series = points[f"{run_id}.explode_run"]
    assert series[29].learning_rate == pytest.approx(0.05)
    after = [p.learning_rate for s, p in series.items() if s >= cut[0].step]
    assert after and all(lr == pytest.approx(0.005) for lr in after)
