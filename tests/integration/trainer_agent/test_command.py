"""The ``command`` task runs any program; the agent tails its metrics file (verl's ``file``
logger format or the project's) onto the metrics topic."""

from __future__ import annotations

import sys

import pytest

from posttrain.events.messages import AdjustLearningRate, PauseStage, ResumeStage
from posttrain.events.topics import Topic
from tests.integration.trainer_agent.conftest import control_for
from tests.integration.trainer_agent.topics import (
    TopicReader,
    finished,
    points_by_key,
    reports_for,
)

pytestmark = pytest.mark.integration

# What a verl run does with trainer.logger=['file']: one JSON line per step, unbuffered, at
# VERL_FILE_LOGGER_PATH. Half of one line is written first, as a slow writer would.
_VERL_LIKE = """
import json, os, time
path = os.environ["VERL_FILE_LOGGER_PATH"]
job = os.environ["POSTTRAIN_JOB_ID"]
with open(path, "a") as fh:
    for step in range(1, 21):
        line = json.dumps({"step": step, "data": {"actor/pg_loss": 1.0 / step,
                                                  "critic/score/mean": step / 20,
                                                  "timing_s/step": 0.01, "job": job}})
        fh.write(line[:10]); fh.flush(); time.sleep(0.01)
        fh.write(line[10:] + "\\n"); fh.flush()
print("done", flush=True)
"""

_WRITER = """
import os
from posttrain.trainer_agent import create_metrics_file_writer
job, directory = os.environ["POSTTRAIN_JOB_ID"], os.environ["POSTTRAIN_METRICS_DIR"]
with create_metrics_file_writer(job, directory) as writer:
    for step in range(5):
        writer(step=step, loss=1.0, grad_norm_actor=0.5)
"""


async def test_command_metrics_in_verl_and_project_formats_reach_the_topic(
    start_agent, kafka_settings
):
    agent = await start_agent(slots=2)
    verl = agent.run_stage("command", {"argv": [sys.executable, "-c", _VERL_LIKE]})
    writer = agent.run_stage("command", {"argv": [sys.executable, "-c", _WRITER]}, stage="writer")
    async with TopicReader(kafka_settings, Topic.STAGE_REPORTS) as reports:
        await agent.send(verl)
        await agent.send(writer)
        done = await reports.wait(
            lambda ms: (
                finished(ms, verl.command_id)
                and finished(ms, writer.command_id)
                and [finished(ms, verl.command_id), finished(ms, writer.command_id)]
            ),
            timeout=120,
        )
    assert [d.TYPE for d in done] == ["StageSucceeded", "StageSucceeded"], done
    assert done[0].outputs["exit_code"] == 0
    async with TopicReader(kafka_settings, Topic.METRICS) as metrics:
        points = await metrics.wait(
            lambda ms: (
                len(points_by_key(ms, verl.job_id)) == 20
                and len(points_by_key(ms, writer.job_id)) == 5
                and (points_by_key(ms, verl.job_id), points_by_key(ms, writer.job_id))
            )
        )
    verl_points = sorted(points[0].values(), key=lambda p: p.step)
    assert [p.step for p in verl_points] == list(range(1, 21))
    assert verl_points[1].policy_loss == 0.5 and verl_points[-1].reward_mean == 1.0
    assert verl_points[0].custom == {"timing_s/step": 0.01, "job": verl.job_id}
    assert {p.grad_norm for p in points[1].values()} == {0.5}


# A program that goes on from its own state file when started again, as `accepts: [pause]`
# declares: one metrics line per step, the step saved after each; SIGTERM ends it between steps.
_RESUMABLE = """
import json, os, signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
state = sys.argv[1]
step = int(open(state).read()) if os.path.exists(state) else 0
with open(os.environ["POSTTRAIN_METRICS_FILE"], "a") as fh:
    while step < 400 and not stop:
        step += 1
        fh.write(json.dumps({"step": step, "loss": 1.0 / step}) + "\\n"); fh.flush()
        open(state + ".tmp", "w").write(str(step)); os.replace(state + ".tmp", state)
        time.sleep(0.02)
"""


def _answered(messages, run, action_id):
    return [
        m
        for m in reports_for(messages, run.command_id)
        if m.TYPE in ("ActionApplied", "ActionRefused") and m.action_id == action_id
    ]


async def test_a_command_that_accepts_pause_is_paused_and_resumed(
    start_agent, kafka_settings, tmp_path
):
    agent = await start_agent()
    argv = [sys.executable, "-c", _RESUMABLE, str(tmp_path / "state")]
    run = agent.run_stage("command", {"argv": argv, "accepts": ["pause"]}, stage="resumable")
    async with (
        TopicReader(kafka_settings, Topic.STAGE_REPORTS) as reports,
        TopicReader(kafka_settings, Topic.METRICS) as metrics,
    ):
        await agent.send(run)
        await metrics.wait(lambda ms: len(points_by_key(ms, run.job_id)) >= 10, timeout=60)
        # Not declared: refused by the stage, with the reason.
        await agent.send(control_for(AdjustLearningRate, run, "lr-1", factor=0.5))
        [lr] = await reports.wait(lambda ms: _answered(ms, run, "lr-1"))
        assert lr.TYPE == "ActionRefused" and "it takes cancel, pause" in lr.reason

        await agent.send(control_for(PauseStage, run, "pause-1"))
        [paused] = await reports.wait(lambda ms: reports_for(ms, run.command_id, "StagePaused"))
        [applied] = _answered(reports.messages(), run, "pause-1")
        assert applied.TYPE == "ActionApplied"
        stopped_at = int((tmp_path / "state").read_text())
        assert 10 <= stopped_at < 400

        await agent.send(control_for(ResumeStage, run, "resume-1"))
        done = await reports.wait(lambda ms: finished(ms, run.command_id), timeout=60)
        assert done.TYPE == "StageSucceeded", done
        steps = await metrics.wait(
            lambda ms: (
                len(p := points_by_key(ms, run.job_id)) == 400
                and sorted(x.step for x in p.values())
            )
        )
    assert paused.step == 0
    assert steps == list(range(1, 401))  # the resumed program went on, nothing done twice
