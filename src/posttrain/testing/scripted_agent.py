"""A scripted trainer agent (a test double for a GPU node): it heartbeats, records every
RunStage it receives, and answers with StageStarted then StageSucceeded or StageFailed; with
``slots``, it runs at most that many stages at once and rejects the rest (StageRejected), as a
real agent started with ``--slots`` does."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from posttrain.events import Envelope, decode
from posttrain.events.kafka import EventProducer, KafkaSettings
from posttrain.events.kafka.producer import partition_for
from posttrain.events.messages import (
    AgentHeartbeat,
    CancelStage,
    RunStage,
    StageFailed,
    StageRejected,
    StageStarted,
    StageSucceeded,
)
from posttrain.events.messages.stage import report_fields
from posttrain.events.topics import TOPICS, Topic


class ScriptedAgent:
    def __init__(
        self,
        settings: KafkaSettings,
        agent_id: str,
        record: Path,
        *,
        gpus: int = 8,
        durations: Mapping[str, float] | None = None,
        default_duration: float = 0.2,
        fail: Mapping[str, Sequence[int]] | None = None,
        heartbeat_s: float = 0.5,
        holds: Mapping[str, asyncio.Event] | None = None,
        slots: int | None = None,
    ) -> None:
        self.settings = settings
        self.agent_id = agent_id
        self.record = record
        self.gpus = gpus
        self.durations = dict(durations or {})
        self.default_duration = default_duration
        self.fail = {k: set(v) for k, v in (fail or {}).items()}
        self.heartbeat_s = heartbeat_s
        self.holds = dict(holds or {})  # a stage does not finish before its event is set
        self.slots = slots
        self.rejected: list[RunStage] = []  # refused for lack of a free slot
        self.running: dict[str, asyncio.Task[None]] = {}
        self.received: list[RunStage] = []
        # command id -> what happened when, on our clock: received, started, finished
        self.timeline: dict[str, dict[str, float]] = {}
        self._producer = EventProducer(settings)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self._producer.start()
        self._tasks = [
            asyncio.create_task(self._heartbeats()),
            asyncio.create_task(self._commands()),
        ]

    async def stop(self) -> None:
        for task in [*self._tasks, *self.running.values()]:
            task.cancel()
        for task in [*self._tasks, *self.running.values()]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._beat(stopping=True)
        await self._producer.stop()

    async def _beat(self, stopping: bool = False) -> None:
        beat = AgentHeartbeat(
            agent_id=self.agent_id,
            host="test",
            gpus=self.gpus,
            free_gpus=self.gpus,
            running=sorted(self.running),
            slots=self.slots,
            interval_s=self.heartbeat_s,
            sent_at=time.time(),
            stopping=stopping,
        )
        await self._producer.send(Topic.AGENTS, Envelope.create(beat, key=self.agent_id))

    async def _heartbeats(self) -> None:
        while True:
            await self._beat()
            await asyncio.sleep(self.heartbeat_s)

    async def _commands(self) -> None:
        topic = self.settings.topic(Topic.AGENT_COMMANDS)
        partition = partition_for(self.agent_id.encode(), TOPICS[Topic.AGENT_COMMANDS].partitions)
        consumer = AIOKafkaConsumer(
            **self.settings.client_options(),
            group_id=self.settings.group(f"agent-{self.agent_id}"),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await consumer.start()
        consumer.assign([TopicPartition(topic, partition)])
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        await self._handle(decode(record.value, record.headers).data)
                if batches:
                    await consumer.commit()
        finally:
            await consumer.stop()

    async def _handle(self, command: Any) -> None:
        if getattr(command, "agent_id", None) != self.agent_id:
            return
        if isinstance(command, RunStage):
            if command.command_id in self.running:
                return  # already running: a redelivery
            if self.slots is not None and len(self.running) >= self.slots:
                self.rejected.append(command)
                await self._report(
                    command, StageRejected, reason="agent runs as many stages as it has slots"
                )
                return
            self.timeline[command.command_id] = {"received": time.time()}
            self.received.append(command)
            with self.record.open("ab") as fh:
                fh.write(
                    orjson.dumps(
                        {
                            "command_id": command.command_id,
                            "stage": command.stage,
                            "attempt": command.attempt,
                            "at": time.time(),
                        }
                    )
                    + b"\n"
                )
                fh.flush()
                os.fsync(fh.fileno())
            self.running[command.command_id] = asyncio.create_task(self._run(command))
        elif isinstance(command, CancelStage):
            task = self.running.pop(command.run_command_id, None)
            if task is not None:
                task.cancel()

    async def _report(self, run: RunStage, message_cls: type[Any], **fields: Any) -> None:
        message = message_cls(**report_fields(run, self.agent_id), **fields)
        await self._producer.send(
            Topic.STAGE_REPORTS, Envelope.create(message, key=run.pipeline_id)
        )

    async def _run(self, run: RunStage) -> None:
        times = self.timeline.setdefault(run.command_id, {})
        try:
            times["started"] = time.time()
            await self._report(run, StageStarted, started_at=times["started"])
            await asyncio.sleep(self.durations.get(run.stage, self.default_duration))
            if run.stage in self.holds:
                await self.holds[run.stage].wait()
            times["finished"] = time.time()
            if run.attempt in self.fail.get(run.stage, ()):
                await self._report(
                    run,
                    StageFailed,
                    finished_at=time.time(),
                    kind="error",
                    error=f"scripted failure of {run.stage} attempt {run.attempt}",
                )
            else:
                await self._report(
                    run,
                    StageSucceeded,
                    finished_at=time.time(),
                    outputs={"checkpoint": f"/ckpt/{run.command_id}"},
                )
        finally:
            self.running.pop(run.command_id, None)
            if self.slots is not None:
                with contextlib.suppress(Exception):  # said at once: a slot is free again
                    await self._beat()


def read_record(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
