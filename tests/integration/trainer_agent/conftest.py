"""Trainer agents on the real broker, running real (tiny) training.

One stage zygote (torch, transformers and TRL imported once) serves every in-process agent of
the session, so each stage starts in milliseconds; each test gets its own agent, work directory
and topic namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from posttrain.events import Envelope
from posttrain.events.kafka import EventProducer, KafkaSettings
from posttrain.events.messages import Message, RunStage
from posttrain.events.tasks import SshConfig
from posttrain.events.topics import Topic
from posttrain.testing.sshd import SshdMissing, TestSshd
from posttrain.trainer_agent.agent import Agent, AgentConfig
from posttrain.trainer_agent.launcher import ProcessId, ZygoteLauncher, signal_group

REPO = Path(__file__).resolve().parents[3]
TRAIN = str(REPO / "examples" / "data" / "addition_train.jsonl")
EVAL = str(REPO / "examples" / "data" / "addition_eval.jsonl")
DPO = str(REPO / "examples" / "data" / "addition_dpo.jsonl")
_ids = itertools.count(1)


@pytest.fixture(scope="session")
def zygote() -> Iterator[ZygoteLauncher]:
    launcher = ZygoteLauncher()
    yield launcher
    launcher.close()


def tiny_sft(train_data_path: str = TRAIN, **overrides: Any) -> dict[str, Any]:
    """A tiny SFT config that learns addition on this CPU in a few seconds."""
    config = {
        "algorithm": "sft",
        "model_path": "tiny-llama",
        "train_data_path": train_data_path,
        "max_steps": 150,
        "batch_size": 32,
        "learning_rate": 3e-3,
        "lr_scheduler_type": "constant",
        "max_length": 16,
        "seed": 0,
        "num_threads": 1,
    }
    config.update(overrides)
    return config


def control_for(cls: type[Message], run: RunStage, action_id: str, **fields: Any) -> Any:
    """A control command of type ``cls`` (PauseStage, AdjustLearningRate, ...) for a run."""
    return cls(
        action_id=action_id,
        agent_id=run.agent_id,
        run_command_id=run.command_id,
        pipeline_id=run.pipeline_id,
        stage=run.stage,
        attempt=run.attempt,
        reason="test",
        **fields,
    )


class AgentHarness:
    """An agent running in this test's event loop, and a way to send it commands."""

    def __init__(self, agent: Agent, producer: EventProducer, settings: KafkaSettings) -> None:
        self.agent = agent
        self.producer = producer
        self.settings = settings
        self.name = agent.config.agent_id

    def run_stage(
        self,
        task: str,
        params: dict[str, Any],
        *,
        stage: str | None = None,
        attempt: int = 1,
        pipeline_id: str = "pipe-1",
        **fields: Any,
    ) -> RunStage:
        n = next(_ids)
        stage = stage or f"{task}-{n}"
        return RunStage(
            command_id=f"{pipeline_id}:{stage}:{attempt}",
            agent_id=self.name,
            pipeline_id=pipeline_id,
            stage=stage,
            attempt=attempt,
            job_id=f"job-{stage}",
            task=task,
            params=params,
            **fields,
        )

    async def send(self, message: Message) -> None:
        await self.producer.send(Topic.AGENT_COMMANDS, Envelope.create(message, key=self.name))


@pytest_asyncio.fixture
async def start_agent(
    kafka_settings: KafkaSettings, producer: EventProducer, zygote: ZygoteLauncher, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    running: list[tuple[Agent, asyncio.Task[None]]] = []

    async def start(name: str = "agent-1", **config: Any) -> AgentHarness:
        settings = dict(
            agent_id=name,
            work_dir=str(tmp_path / name),
            heartbeat_s=1.0,
            poll_s=0.1,
            cancel_grace_s=20.0,
            kill_grace_s=5.0,
            cwd=str(REPO),
            stage_env=(("OMP_NUM_THREADS", "1"),),
        )
        settings.update(config)
        agent = Agent(AgentConfig(**settings), kafka_settings, zygote)
        task = asyncio.create_task(agent.run())
        running.append((agent, task))
        ready = asyncio.create_task(agent.ready.wait())
        await asyncio.wait([ready, task], timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises what stopped it
        assert agent.ready.is_set(), "agent not ready after 60 s"
        return AgentHarness(agent, producer, kafka_settings)

    yield start
    for agent, task in running:
        agent.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        # Stages outlive their agent by design: a test leaves none behind.
        for entry in agent.journal.entries.values():
            for launch in entry.launches:
                signal_group(ProcessId(launch.pid, launch.pid_start), signal.SIGKILL)


@pytest.fixture
def sshd(tmp_path: Path) -> Any:
    server = TestSshd(tmp_path / "sshd")
    try:
        server.start()
    except SshdMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def ssh_config(sshd: TestSshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SshConfig:
    # The key reaches the agent as a secret of its own host, never through the pipeline.
    monkeypatch.setenv("POSTTRAIN_SECRET_TEST_KEY", sshd.client_key.read_text())
    return SshConfig(
        host="127.0.0.1",
        port=sshd.port,
        user=sshd.user,
        key_secret="test-key",
        remote_dir=str(tmp_path / "remote"),
        known_hosts_file=str(sshd.known_hosts),
        env={"PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture
def wrong_known_hosts(sshd: TestSshd, tmp_path: Path) -> Path:
    """known_hosts naming the test host with another host's key."""
    other_key = tmp_path / "other_host_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True
    )
    kind, body = Path(f"{other_key}.pub").read_text().split()[:2]
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {kind} {body}\n")
    return wrong
