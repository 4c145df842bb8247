"""Failures are reported with their kind, and the agent goes on."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from posttrain.events.codec import decode
from posttrain.events.messages.launch import LAUNCH_TYPES, LaunchEnded
from posttrain.events.topics import Topic
from posttrain.trainer_agent.launcher import ProcessId, is_alive, signal_group
from tests.integration.trainer_agent.topics import TopicReader, finished
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

_OOM_SCRIPT = (
    "import torch\nraise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')\n"
)


async def test_oom_error_and_timeout_are_reported_by_kind_and_the_agent_survives(
    start_agent, kafka_settings
):
    agent = await start_agent(slots=3)
    oom = agent.run_stage(
        "python", {"entrypoint": "tests.integration.trainer_agent.stage_functions:raise_oom"}
    )
    oom_command = agent.run_stage("command", {"argv": [sys.executable, "-c", _OOM_SCRIPT]})
    error = agent.run_stage(
        "python",
        {"entrypoint": "tests.integration.trainer_agent.stage_functions:raise_value_error"},
    )
    slow = agent.run_stage(
        "command", {"argv": [sys.executable, "-c", "import time; time.sleep(60)"]}, timeout_s=1.0
    )
    after = agent.run_stage(
        "python",
        {
            "entrypoint": "tests.integration.trainer_agent.stage_functions:echo",
            "kwargs": {"alive": True},
        },
    )
    async with TopicReader(kafka_settings, Topic.STAGE_REPORTS) as reports:
        for command in (oom, oom_command, error):
            await agent.send(command)
        outcomes = await reports.wait(
            lambda ms: (
                all(finished(ms, c.command_id) for c in (oom, oom_command, error))
                and [finished(ms, c.command_id) for c in (oom, oom_command, error)]
            ),
            timeout=120,
        )
        await agent.send(slow)
        timed_out = await reports.wait(lambda ms: finished(ms, slow.command_id), timeout=60)
        await agent.send(after)
        survived = await reports.wait(lambda ms: finished(ms, after.command_id), timeout=60)

    oom_failed, oom_command_failed, error_failed = outcomes
    assert oom_failed.TYPE == "StageFailed" and oom_failed.kind == "oom"
    assert "Tried to allocate 20.00 GiB" in oom_failed.error
    assert oom_failed.details["exception"] == "torch.OutOfMemoryError"
    assert oom_failed.details["memory"]["rss_bytes"] > 0
    # The stage said so in its result file, a codec-encoded LaunchEnded.
    oom_entry = agent.agent.journal.get(oom.command_id)
    written = decode(
        (Path(oom_entry.attempt_dir) / "result-1.json").read_bytes(), types=LAUNCH_TYPES
    )
    assert isinstance(written.data, LaunchEnded)
    assert (written.data.status, written.data.kind) == ("failed", "oom")
    assert oom_command_failed.kind == "oom"
    assert "CUDA out of memory" in oom_command_failed.details["log_tail"]
    assert error_failed.kind == "error" and "ValueError" in error_failed.error
    assert timed_out.TYPE == "StageFailed" and timed_out.kind == "timeout"
    assert survived.TYPE == "StageSucceeded"
    assert survived.outputs["alive"] is True and survived.outputs["job_id"] == after.job_id


async def test_a_stage_that_dies_is_failed_and_one_that_died_while_the_agent_was_down_is_lost(
    start_agent, kafka_settings
):
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    first = await start_agent(name="crashy", slots=2)
    killed = first.run_stage("command", {"argv": sleeper}, stage="killed")
    orphan = first.run_stage("command", {"argv": sleeper}, stage="orphan")
    async with TopicReader(kafka_settings, Topic.STAGE_REPORTS) as reports:
        await first.send(killed)
        await first.send(orphan)
        await reports.wait(
            lambda ms: len([m for m in ms if m.TYPE == "StageStarted"]) == 2, timeout=60
        )
        # A stage process killed under a running agent (the kernel's OOM killer, say).
        signal_group(_process(first, killed), signal.SIGKILL)
        died = await reports.wait(lambda ms: finished(ms, killed.command_id), timeout=30)
        assert died.TYPE == "StageFailed" and died.kind == "error"
        assert "without reporting an outcome" in died.error

        # The agent stops (its stages go on), the stage dies meanwhile, a new agent starts.
        first.agent.stop()
        await asyncio.wait_for(first.agent.stopped.wait(), 30)
        orphan_process = _process(first, orphan)
        signal_group(orphan_process, signal.SIGKILL)
        # SIGKILL takes effect asynchronously: the stage must be dead before the new agent looks.
        await wait_for(lambda: not is_alive(orphan_process), timeout=30, what="the orphan dead")
        await start_agent(name="crashy", slots=2)
        lost = await reports.wait(lambda ms: finished(ms, orphan.command_id), timeout=30)
    assert lost.TYPE == "StageFailed" and lost.kind == "lost"


def _process(harness, run) -> ProcessId:
    launch = harness.agent.journal.get(run.command_id).launch
    return ProcessId(launch.pid, launch.pid_start)
