"""Actions carried out end to end, on the real broker, with the orchestrator, a trainer agent and
real (tiny) training in stage processes. Requests go on posttrain.pipeline.commands as the
diagnostics stream sends them; everything the test checks is on the pipeline's event log or the
metrics topic.

- A loss spike injected at step N: a rollback goes back to the checkpoint before N (model,
  optimizer, scheduler, RNG), skips batches, and the run finishes.
- NaN weights from step N: a pause saves a poisoned checkpoint, marked so; the resume goes on
  from the last checkpoint with finite weights, and the run finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from posttrain.events import Envelope
from posttrain.events.messages import RequestAction
from posttrain.events.topics import Topic
from posttrain.orchestrator.client import PipelineExecutor
from posttrain.orchestrator.shell.service import Orchestrator
from posttrain.testing.orchestrator import read_log
from tests.integration.trainer_agent.conftest import tiny_sft
from tests.integration.trainer_agent.topics import TopicReader, points_by_key
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

SAVE_STEPS = 10


@pytest_asyncio.fixture
async def orchestrator(kafka_settings) -> AsyncIterator[Orchestrator]:
    stop = asyncio.Event()
    service = Orchestrator(kafka_settings, tick_interval_s=0.2, session_timeout_ms=2000)
    await service.start()
    task = asyncio.create_task(service.run(stop))
    try:
        yield service
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        await service.stop()


BATCHES_PER_EPOCH = 20  # 80 rows of addition, 4 a batch
FAULTS = "posttrain.testing.hf_faults:Inject"


def _training(name: str, **inject: Any) -> dict[str, Any]:
    config = tiny_sft(
        max_steps=70,
        batch_size=4,
        save_steps=SAVE_STEPS,
        callbacks=[{"entrypoint": FAULTS, "kwargs": {**inject, "step_s": 0.3}}],
    )
    return {"name": name, "task": "train_model", "params": {"config": config}}


async def _request(producer, pipeline_id: str, action_id: str, action: str, **fields: Any) -> None:
    message = RequestAction(
        action_id=action_id,
        pipeline_id=pipeline_id,
        stage="train",
        attempt=1,
        action=action,
        reason="e2e",
        **fields,
    )
    await producer.send(Topic.PIPELINE_COMMANDS, Envelope.create(message, key=pipeline_id))


async def _pipeline_events(settings, pipeline_id: str, done: str) -> list[Any]:
    async def check() -> list[Any] | None:
        events = [e for e in await read_log(settings) if e.data.pipeline_id == pipeline_id]
        return events if any(e.type == done for e in events) else None

    return await wait_for(check, timeout=240, interval=1.0, what=f"{done} of {pipeline_id}")


async def _points_to(metrics: TopicReader, job_id: str, last_step: int) -> list[Any]:
    """The job's points once the last one (of its last launch) has arrived."""
    return await metrics.wait(
        lambda ms: (points := _in_order(ms, job_id)) and points[-1].step == last_step and points,
        timeout=60,
        what=f"the points of {job_id} up to step {last_step}",
    )


def _is_nan(value: float | None) -> bool:
    return value is not None and math.isnan(value)


def _in_order(messages: list[Any], job_id: str) -> list[Any]:
    """The job's points as the stage reported them (source by source, in sequence)."""
    return [points_by_key(messages, job_id)[k] for k in sorted(points_by_key(messages, job_id))]


async def test_a_loss_spike_is_rolled_back_to_a_checkpoint_before_it_and_the_run_finishes(
    start_agent, orchestrator, kafka_settings, producer, run_id
):
    spike_at = 25
    await start_agent()
    await PipelineExecutor(run_id, settings=kafka_settings).aexecute(
        [_training("train", spike_at=spike_at)]
    )
    job_id = f"{run_id}.train"
    async with TopicReader(kafka_settings, Topic.METRICS) as metrics:
        # As diagnostics would, once the spike is seen: roll back, skip 3 batches.
        await metrics.wait(
            lambda ms: any(p.step >= spike_at for p in points_by_key(ms, job_id).values()),
            timeout=180,
        )
        await _request(
            producer,
            run_id,
            "rollback-1",
            "rollback",
            anomaly_id="an-spike",
            step=spike_at,
            rollback_steps=2,
            skip_batches=3,
        )
        events = await _pipeline_events(kafka_settings, run_id, "PipelineSucceeded")
        [succeeded] = [e.data for e in events if e.type == "StageSucceeded"]
        points = await _points_to(metrics, job_id, succeeded.outputs["steps"])

    by_type = {e.type: [x.data for x in events if x.type == e.type] for e in events}
    [requested] = by_type["ActionRequested"]
    assert (requested.action, requested.step, requested.skip_batches) == ("rollback", 25, 3)
    [applied] = by_type["ActionApplied"]
    details = applied.details
    assert applied.action == "rollback" and applied.action_id == "rollback-1"
    # Back to the last checkpoint before the spike (saved every 10 steps: step 20).
    assert details["to_step"] == 20 and details["checkpoint"].endswith("checkpoint-20")
    assert details["from_step"] >= spike_at and applied.step == details["from_step"]
    assert details["restored"] == ["model", "optimizer", "scheduler", "rng"]
    # Skipped within the epoch the run was in (HF ends training on an epoch with no batch).
    left_in_epoch = -details["from_step"] % BATCHES_PER_EPOCH
    assert (details["skip_batches"], details["skipped_batches"]) == (3, min(3, left_in_epoch))
    assert "ActionRefused" not in by_type
    assert succeeded.outputs["steps"] >= 21

    # The metrics show it: the spike, then steps 21.. again, on the weights of step 20.
    steps = [p.step for p in points]
    back = next(i for i in range(1, len(steps)) if steps[i] < steps[i - 1])
    assert steps[back] == 21 and steps[back - 1] == details["from_step"]
    loss = {p.step: p.loss for p in points[:back]}
    spiked, before = loss[spike_at], loss[spike_at - 1]
    assert spiked > 3 * before, (before, spiked)
    after = [p.loss for p in points[back : back + 5]]
    assert max(after) < spiked / 2, (after, spiked)


async def test_a_pause_on_nan_weights_resumes_from_the_last_finite_checkpoint(
    start_agent, orchestrator, kafka_settings, producer, run_id
):
    nan_at = 25
    await start_agent()
    await PipelineExecutor(run_id, settings=kafka_settings).aexecute(
        [_training("train", nan_at=nan_at)]
    )
    job_id = f"{run_id}.train"
    async with TopicReader(kafka_settings, Topic.METRICS) as metrics:
        # As diagnostics would on a non-finite loss: pause.
        await metrics.wait(
            lambda ms: any(_is_nan(p.loss) for p in points_by_key(ms, job_id).values()),
            timeout=180,
        )
        await _request(producer, run_id, "pause-1", "pause", anomaly_id="an-nan", step=nan_at)
        events = await _pipeline_events(kafka_settings, run_id, "StagePaused")
        [paused] = [e.data for e in events if e.type == "StagePaused"]
        # The pause's checkpoint holds NaN weights: marked, and not the one to go on from.
        assert paused.step >= nan_at and paused.checkpoint.endswith(f"checkpoint-{paused.step}")
        assert "weights" in paused.non_finite and "loss" in paused.non_finite
        assert paused.resume_checkpoint.endswith("checkpoint-20")
        poisoned = [
            e.data.step for e in events if e.type == "CheckpointSaved" and e.data.non_finite
        ]
        assert poisoned and min(poisoned) > 20

        await _request(producer, run_id, "resume-1", "resume")
        events = await _pipeline_events(kafka_settings, run_id, "PipelineSucceeded")
        points = await _points_to(metrics, job_id, 70)

    [resumed] = [e.data for e in events if e.type == "ActionApplied" and e.data.action == "resume"]
    assert resumed.details["checkpoint"] == paused.resume_checkpoint
    # The resumed launch went on from step 21 on finite weights, to the end.
    resumed_points = [p for p in points if p.step > 20][-(70 - 20) :]
    assert [p.step for p in resumed_points] == list(range(21, 71))
    assert all(math.isfinite(p.loss) for p in resumed_points)
    assert [e.type for e in events].count("ActionRefused") == 0
