"""The agent as a separate process, killed during a stage: the stage is not trained twice."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from posttrain.events import Envelope
from posttrain.events.messages import AgentHeartbeat, RunStage
from posttrain.events.topics import Topic
from posttrain.testing import services
from posttrain.testing.services import ServiceProcess
from tests.integration.trainer_agent.conftest import REPO, tiny_sft
from tests.integration.trainer_agent.topics import TopicReader, points_by_key, reports_for
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

FAULTS = "posttrain.testing.hf_faults:Inject"


class AgentProcess:
    """The agent ``name`` on ``work_dir``, started again as often as asked (a log each)."""

    def __init__(self, kafka_settings, work_dir: Path, name: str) -> None:
        self.kafka_settings = kafka_settings
        self.work_dir = work_dir
        self.name = name
        self.processes: list[ServiceProcess] = []

    def start(self) -> ServiceProcess:
        process = services.agent(
            self.kafka_settings,
            self.work_dir.parent / f"{self.name}-{len(self.processes)}.log",
            name=self.name,
            work_dir=self.work_dir,
            slots=1,
            cwd=REPO,
            # A fresh interpreter per stage: no zygote to wait for in the restarted agent.
            extra=["--heartbeat", "1", "--stage-threads", "1", "--no-zygote"],
        ).start()
        self.processes.append(process)
        return process


@pytest.fixture
def agent_process(kafka_settings, tmp_path) -> Iterator[AgentProcess]:
    agents = AgentProcess(kafka_settings, tmp_path / "work", "restarted")
    yield agents
    services.stop_all(agents.processes)


async def test_killing_the_agent_mid_stage_does_not_train_the_command_twice(
    agent_process, producer, kafka_settings, tmp_path
):
    # The stage waits at step 25 until the new agent is up: the agent dies and comes back
    # mid-stage however fast the machine trains the 300 steps.
    release = tmp_path / "release"
    hold = {"entrypoint": FAULTS, "kwargs": {"release_file": str(release), "hold_at": 25}}
    run = RunStage(
        command_id="pipe-r:sft:1",
        agent_id="restarted",
        pipeline_id="pipe-r",
        stage="sft",
        attempt=1,
        job_id="job-restart",
        task="train_model",
        params={"config": tiny_sft(max_steps=300, callbacks=[hold])},
    )

    async def send() -> None:
        await producer.send(Topic.AGENT_COMMANDS, Envelope.create(run, key="restarted"))

    first = agent_process.start()
    async with (
        TopicReader(kafka_settings, Topic.STAGE_REPORTS) as reports,
        TopicReader(kafka_settings, Topic.METRICS) as metrics,
        TopicReader(kafka_settings, Topic.AGENTS) as agents,
    ):
        await agents.wait(lambda ms: any(isinstance(m, AgentHeartbeat) for m in ms), timeout=60)
        await send()
        await reports.wait(lambda ms: reports_for(ms, run.command_id, "StageStarted"))
        await metrics.wait(
            lambda ms: any(p.step >= 20 for p in points_by_key(ms, run.job_id).values()),
            timeout=120,
        )
        # SIGKILL to the agent alone: no goodbye, the journal is all that is left, and its
        # stage process runs on (to be re-attached).
        os.kill(first.pid, signal.SIGKILL)
        await wait_for(lambda: not first.running, timeout=10, what="the agent gone")

        second = agent_process.start()
        await second.wait_ready()
        await reports.poll()
        assert not reports_for(reports.messages(), run.command_id, "StageSucceeded")
        release.touch()
        await send()  # the command is delivered again, as after a crash before the commit
        [succeeded] = await reports.wait(
            lambda ms: reports_for(ms, run.command_id, "StageSucceeded"), timeout=180
        )
        assert not succeeded.replayed
        await send()  # and once more after it finished: answered from the journal
        await reports.wait(
            lambda ms: len(reports_for(ms, run.command_id, "StageSucceeded")) == 2, timeout=60
        )
        points = await metrics.wait(
            lambda ms: len(points_by_key(ms, run.job_id)) >= 300 and points_by_key(ms, run.job_id)
        )

    outcomes = reports_for(reports.messages(), run.command_id, "StageSucceeded")
    assert [m.replayed for m in outcomes] == [False, True]
    assert outcomes[1].outputs == outcomes[0].outputs
    assert len(reports_for(reports.messages(), run.command_id, "StageStarted")) == 1
    # One training process ran the 300 steps, each once.
    assert len({source for source, _ in points}) == 1
    assert sorted(p.step for p in points.values()) == list(range(1, 301))
