"""The trainer agent: one per GPU node.

It announces itself and its capacity on ``posttrain.agents`` (heartbeats), reads the commands
addressed to it on ``posttrain.agent.commands`` (its own partition of the topic, keyed by agent
id), runs each stage in a stage process (``launcher``), forwards control commands to it through
its control file, and publishes what the stage reports on ``posttrain.stage.reports``.

Every decision comes from the journal (``core.journal``): a RunStage id already finished is
answered again from it, one that runs is left alone, even across restarts. Stopping the agent
leaves stages running: the next agent on this work directory re-attaches to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from posttrain.events import Envelope
from posttrain.events.actions import ACTION_COMMANDS
from posttrain.events.kafka import EventConsumer, EventProducer, KafkaSettings
from posttrain.events.kafka.producer import partition_for
from posttrain.events.messages import (
    MESSAGE_TYPES,
    ActionApplied,
    ActionKind,
    ActionRefused,
    AgentHeartbeat,
    CheckpointSaved,
    Message,
    RunStage,
    StageControl,
    StageFailed,
    StagePaused,
    StageRejected,
    StageStarted,
    StageSucceeded,
)
from posttrain.events.topics import Topic
from posttrain.service.http import EndpointServer
from posttrain.trainer_agent.core.failure import kind_from_log, tail
from posttrain.trainer_agent.core.journal import (
    Capacity,
    Entry,
    Ignore,
    Reject,
    Replay,
    Start,
    Status,
    decide_control,
    decide_recovery,
    decide_run,
    usage,
)
from posttrain.trainer_agent.endpoints import AgentStats, routes
from posttrain.trainer_agent.journal import Journal
from posttrain.trainer_agent.launcher import (
    Launcher,
    ProcessId,
    ZygoteLauncher,
    is_alive,
    signal_group,
)
from posttrain.trainer_agent.reporting import ENV_ATTEMPT, ENV_JOB_ID, ENV_PIPELINE_ID, ENV_STAGE
from posttrain.trainer_agent.stage_files import (
    CONTROL,
    EVENTS,
    LOG,
    LineFollower,
    append_line,
    file_size,
    read_json,
    result_path,
    spec_path,
    write_json_atomic,
)
from posttrain.trainer_agent.tasks.context import safe_name

log = logging.getLogger("posttrain.trainer_agent")

# Every control command and the action it carries (one table, in libs/events).
_CONTROL_KINDS: dict[type[Message], ActionKind] = {
    cls: action for action, cls in ACTION_COMMANDS.items()
}
# What a control line in the stage's control file carries besides its type.
_ROUTING_FIELDS = frozenset({"agent_id", "run_command_id", "pipeline_id", "stage", "attempt"})


@dataclass(frozen=True)
class AgentConfig:
    name: str
    work_dir: Path
    gpus: int = 0
    labels: frozenset[str] = frozenset()
    # Stages that may run at once; a CPU-only agent still runs at most this many.
    slots: int = 1
    heartbeat_s: float = 5.0
    poll_s: float = 0.2
    # After CancelStage, how long a stage may take to reach a step boundary before it is
    # terminated (SIGTERM), and then killed (SIGKILL).
    cancel_grace_s: float = 30.0
    kill_grace_s: float = 15.0
    cwd: str = field(default_factory=os.getcwd)
    host: str = field(default_factory=socket.gethostname)
    # Extra environment for every stage process (e.g. OMP_NUM_THREADS).
    stage_env: tuple[tuple[str, str], ...] = ()
    # /healthz and /metrics; None: no HTTP server, 0: any free port.
    http_host: str = "127.0.0.1"
    http_port: int | None = None


@dataclass
class _Kill:
    reason: str  # "timeout" or "cancelled"
    term_at: float
    kill_at: float
    sent_term: bool = False


class Agent:
    def __init__(
        self, config: AgentConfig, settings: KafkaSettings, launcher: Launcher | None = None
    ) -> None:
        self.config = config
        self.settings = settings
        self.work_dir = config.work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(self.work_dir / "journal.jsonl")
        # A launcher given by the caller is the caller's to close.
        self._own_launcher = launcher is None
        self._launcher: Launcher | None = launcher
        self._producer: EventProducer | None = None
        self._consumer: EventConsumer | None = None
        self._followers: dict[str, LineFollower] = {}
        self._kills: dict[str, _Kill] = {}
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.stopped = asyncio.Event()
        self.stats = AgentStats(config.name, config.heartbeat_s)
        self.http: EndpointServer | None = None

    # --- life cycle ----------------------------------------------------------------------------

    @property
    def launcher(self) -> Launcher:
        if self._launcher is None:
            self._launcher = ZygoteLauncher()
        return self._launcher

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        producer = EventProducer(self.settings)
        await producer.start()
        self._producer = producer
        consumer = EventConsumer(
            self.settings,
            [Topic.AGENT_COMMANDS],
            group_id=f"trainer-agent-{self.config.name}",
            name=f"agent-{self.config.name}",
            dead_letters=producer,
        )
        await consumer.start(subscribe=False)
        self._consumer = consumer
        topic = self.settings.topic(Topic.AGENT_COMMANDS)
        partitions = sorted(await producer.client.partitions_for(topic))
        mine = partition_for(self.config.name.encode(), len(partitions))
        consumer.client.assign([TopicPartition(topic, mine)])
        if self._launcher is None:
            self._launcher = ZygoteLauncher()  # it imports torch now, while we recover
        await self._start_http()
        try:
            await self._recover()
            await self._heartbeat()
            self.ready.set()
            log.info(
                "agent started",
                extra={
                    "agent_id": self.config.name,
                    "work_dir": str(self.config.work_dir),
                    "gpus": self.config.gpus,
                    "slots": self.config.slots,
                    "labels": sorted(self.config.labels),
                    "kafka": self.settings.bootstrap_servers,
                    "namespace": self.settings.namespace,
                    "http": f"{self.config.http_host}:{self.http.port}" if self.http else None,
                    "stages_running": len(usage(self.journal.entries).running),
                },
            )
            tasks: list[asyncio.Task[Any]] = [
                asyncio.create_task(self._heartbeats(), name="heartbeats"),
                asyncio.create_task(self._commands(), name="commands"),
                asyncio.create_task(self._monitor(), name="monitor"),
            ]
            stop: asyncio.Task[Any] = asyncio.create_task(self._stopping.wait())
            done, _ = await asyncio.wait([*tasks, stop], return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for task in done:
                if task is not stop and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            with contextlib.suppress(Exception):
                await self._heartbeat(stopping=True)
        finally:
            if self.http is not None:
                await self.http.stop()
            await consumer.stop()
            await producer.stop()
            if self._own_launcher and self._launcher is not None:
                self._launcher.close()
            self.journal.close()
            self.stopped.set()
            log.info(
                "agent stopped (its stages go on; starting it again re-attaches to them)",
                extra={"agent_id": self.config.name},
            )

    async def _start_http(self) -> None:
        if self.config.http_port is None:
            return
        endpoints = EndpointServer(routes(self.stats), self.config.http_host, self.config.http_port)
        try:
            port = await endpoints.start()
        except OSError as exc:  # a busy port must not keep the agent from its stages
            log.warning(
                "no HTTP endpoints", extra={"port": self.config.http_port, "error": str(exc)}
            )
            return
        self.http = endpoints
        log.info("HTTP endpoints", extra={"host": self.config.http_host, "port": port})

    # --- heartbeats ----------------------------------------------------------------------------

    def _capacity(self) -> Capacity:
        used = usage(self.journal.entries)
        free = tuple(g for g in range(self.config.gpus) if g not in used.gpu_ids)
        return Capacity(free, self.config.labels, self.config.slots - len(used.running))

    async def _heartbeat(self, *, stopping: bool = False) -> None:
        used = usage(self.journal.entries)
        beat = AgentHeartbeat(
            agent_id=self.config.name,
            host=self.config.host,
            gpus=self.config.gpus,
            free_gpus=self.config.gpus - len(used.gpu_ids),
            labels=sorted(self.config.labels),
            running=list(used.running),
            interval_s=self.config.heartbeat_s,
            sent_at=time.time(),
            stopping=stopping,
        )
        await self._send(Topic.AGENTS, beat, key=self.config.name)
        self.stats.last_heartbeat_at = beat.sent_at
        self.stats.running = len(used.running)
        self.stats.paused = sum(
            1 for e in self.journal.entries.values() if e.status is Status.PAUSED
        )

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            try:
                await self._heartbeat()
            except Exception as exc:
                log.warning("heartbeat not sent", extra={"error": str(exc)})

    # --- commands ------------------------------------------------------------------------------

    async def _commands(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=200)
            except Exception as exc:
                # The broker is away: stages go on, commands wait for it (the offsets were
                # committed only for handled ones).
                log.warning("cannot read commands", extra={"error": str(exc)})
                await asyncio.sleep(1.0)
                continue
            for received in batch:
                message = received.envelope.data
                try:
                    await self.handle(message)
                except Exception:
                    # One command that cannot be handled must not stop the agent.
                    log.exception("command failed", extra={"type": message.TYPE})
            if batch:
                try:
                    await self._consumer.commit()
                except Exception as exc:  # redelivered later: the journal makes that harmless
                    log.warning("offsets not committed", extra={"error": str(exc)})

    async def handle(self, message: Message) -> None:
        if getattr(message, "agent_id", None) != self.config.name:
            return  # another agent's command on our partition
        self.stats.commands[message.TYPE] += 1
        if isinstance(message, RunStage):
            await self._run_stage(message)
        elif isinstance(message, StageControl) and type(message) in _CONTROL_KINDS:
            await self._control(message, _CONTROL_KINDS[type(message)])

    async def _run_stage(self, command: RunStage) -> None:
        entry = self.journal.get(command.command_id)
        decision = decide_run(
            entry, command.resources.gpus, command.resources.labels, self._capacity()
        )
        log.info(
            "RunStage",
            extra={"command_id": command.command_id, "decision": decision.action},
        )
        if isinstance(decision, Replay):
            self.stats.replayed += 1
            await self._publish_outcome(decision.outcome, replayed=True)
        elif isinstance(decision, Reject):
            self.stats.rejected += 1
            await self._send(
                Topic.STAGE_REPORTS,
                StageRejected(**_report_fields(command, self.config.name), reason=decision.reason),
                key=command.pipeline_id,
            )
        elif isinstance(decision, Start):
            await self._start(command, decision.gpu_ids)
        elif isinstance(decision, Ignore):
            log.info(
                "RunStage ignored",
                extra={"command_id": command.command_id, "reason": decision.reason},
            )

    async def _start(self, command: RunStage, gpu_ids: tuple[int, ...]) -> None:
        attempt_dir = self.work_dir / "stages" / safe_name(command.command_id)
        attempt_dir.mkdir(parents=True, exist_ok=True)
        entry = self.journal.append(
            "accepted",
            command.command_id,
            run=command.model_dump(mode="json"),
            attempt_dir=str(attempt_dir),
            gpu_ids=list(gpu_ids),
        )
        assert entry is not None
        try:
            await self._launch(entry, resume_from=command.resume_from)
        except Exception as exc:
            await self._finish(entry, _failed(entry, "error", f"stage could not start: {exc}"))
            return
        await self._send(
            Topic.STAGE_REPORTS,
            StageStarted(
                **_report_fields(command, self.config.name),
                started_at=time.time(),
                log_path=str(attempt_dir / LOG),
            ),
            key=command.pipeline_id,
        )

    async def _launch(
        self,
        entry: Entry,
        *,
        resume_from: str | None,
        resume_action: dict[str, Any] | None = None,
        resume_step: int | None = None,
        gpu_ids: tuple[int, ...] | None = None,
    ) -> None:
        number = len(entry.launches) + 1
        attempt_dir = Path(entry.attempt_dir)
        gpus = entry.gpu_ids if gpu_ids is None else gpu_ids
        # Controls already in the file were applied by an earlier launch (or queued for this
        # one while paused): the journal says where this launch starts reading.
        control_offset = entry.control_offset
        write_json_atomic(
            spec_path(attempt_dir, number),
            {
                "run": entry.run,
                "work_dir": str(self.work_dir),
                "kafka": {
                    "bootstrap_servers": self.settings.bootstrap_servers,
                    "namespace": self.settings.namespace,
                },
                "resume_from": resume_from,
                "resume_action": resume_action,
                "resume_step": resume_step,
                "control_offset": control_offset,
            },
        )
        env = self._stage_env(entry, gpus)
        process = await asyncio.to_thread(
            self.launcher.launch, attempt_dir, number, env, self.config.cwd
        )
        self.stats.launches += 1
        self.journal.append(
            "launched",
            entry.command_id,
            pid=process.pid,
            pid_start=process.start,
            started_at=time.time(),
            resume_from=resume_from,
            gpu_ids=list(gpus),
            control_offset=control_offset,
        )
        log.info(
            "stage launched",
            extra={"command_id": entry.command_id, "pid": process.pid, "launch": number},
        )

    def _stage_env(self, entry: Entry, gpus: tuple[int, ...]) -> dict[str, str]:
        run = entry.run
        env = dict(os.environ)
        env.update(dict(self.config.stage_env))
        env.update(
            {
                ENV_JOB_ID: str(run["job_id"]),
                ENV_PIPELINE_ID: str(run["pipeline_id"]),
                ENV_STAGE: str(run["stage"]),
                ENV_ATTEMPT: str(run["attempt"]),
                "POSTTRAIN_COMMAND_ID": entry.command_id,
                "POSTTRAIN_AGENT_ID": self.config.name,
                "KAFKA_BOOTSTRAP_SERVERS": self.settings.bootstrap_servers,
                "POSTTRAIN_TOPIC_NAMESPACE": self.settings.namespace,
                "POSTTRAIN_SPILL_DIR": str(self.work_dir / "spill"),
                # A stage sees only the GPUs it was given (none, if it asked for none).
                "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus),
                "TOKENIZERS_PARALLELISM": "false",
            }
        )
        return env

    async def _control(self, command: StageControl, kind: ActionKind) -> None:
        entry = self.journal.get(command.run_command_id)
        decision = decide_control(entry, kind)
        log.info(
            "control",
            extra={
                "type": command.TYPE,
                "action_id": command.action_id,
                "decision": decision.action,
                "reason": decision.reason,
            },
        )
        if decision.action == "refuse":
            await self._refuse(command, kind, entry, decision.reason)
            return
        assert entry is not None
        attempt_dir = Path(entry.attempt_dir)
        if decision.action in ("forward", "queue"):
            line = command.model_dump(mode="json", exclude=set(_ROUTING_FIELDS))
            append_line(attempt_dir / CONTROL, {"type": command.TYPE, **line})
            if kind == "cancel" and entry.launch is not None:
                now = time.monotonic()
                self._kills.setdefault(
                    entry.command_id,
                    _Kill(
                        "cancelled",
                        now + self.config.cancel_grace_s,
                        now + self.config.cancel_grace_s + self.config.kill_grace_s,
                    ),
                )
        elif decision.action == "resume":
            capacity = self._capacity()
            gpus_needed = len(_needed_gpus(entry))
            if gpus_needed > len(capacity.free_gpu_ids) or capacity.free_slots <= 0:
                log.warning("cannot resume: no capacity", extra={"command_id": entry.command_id})
                await self._refuse(
                    command,
                    kind,
                    entry,
                    f"no capacity to resume: the stage needs {gpus_needed} GPU(s) and a slot, the "
                    f"agent has {len(capacity.free_gpu_ids)} GPU(s) and "
                    f"{max(capacity.free_slots, 0)} slot(s) free",
                )
                return
            # A checkpoint the user names, else the last one whose weights are finite.
            checkpoint = getattr(command, "checkpoint", None) or entry.resume_checkpoint
            await self._launch(
                entry,
                resume_from=checkpoint,
                resume_action={"action_id": command.action_id, "reason": command.reason},
                resume_step=entry.paused_step,
                gpu_ids=tuple(sorted(capacity.free_gpu_ids)[:gpus_needed]),
            )
        elif decision.action == "cancel_paused":
            step = entry.paused_step or 0
            await self._send(
                Topic.STAGE_REPORTS,
                ActionApplied(
                    **_entry_fields(entry, self.config.name),
                    action_id=command.action_id,
                    action="cancel",
                    step=step,
                ),
                key=entry.run["pipeline_id"],
            )
            await self._finish(
                entry, _failed(entry, "cancelled", f"cancelled while paused at step {step}")
            )

    async def _refuse(
        self, command: StageControl, kind: ActionKind, entry: Entry | None, reason: str
    ) -> None:
        """A control this agent cannot apply is reported, not only logged."""
        self.stats.refused += 1
        await self._send(
            Topic.STAGE_REPORTS,
            ActionRefused(
                action_id=command.action_id,
                pipeline_id=command.pipeline_id,
                stage=command.stage,
                attempt=command.attempt,
                action=kind,
                reason=reason,
                step=entry.paused_step if entry is not None else None,
                agent_id=self.config.name,
                command_id=command.run_command_id,
                job_id=entry.run.get("job_id") if entry is not None else None,
            ),
            key=command.pipeline_id,
        )

    # --- monitoring stage processes ------------------------------------------------------------

    async def _monitor(self) -> None:
        while True:
            try:
                await self.check_stages()
            except Exception:
                log.exception("stage monitor failed; retrying")
            await asyncio.sleep(self.config.poll_s)

    async def check_stages(self) -> None:
        if self._launcher is not None:
            self._launcher.reap()
        for entry in list(self.journal.entries.values()):
            if entry.status is Status.FINISHED and not entry.outcome_reported:
                assert entry.outcome is not None
                await self._publish_outcome(entry.outcome, replayed=False)
                self.journal.append("outcome_reported", entry.command_id)
            if entry.status is not Status.RUNNING or entry.launch is None:
                continue
            await self._publish_events(entry)
            await self._check(entry)

    async def _check(self, entry: Entry) -> None:
        launch = entry.launch
        assert launch is not None
        attempt_dir = Path(entry.attempt_dir)
        result = read_json(result_path(attempt_dir, launch.number))
        process = ProcessId(launch.pid, launch.pid_start)
        if result is None and not is_alive(process):
            # It may have written its result just before exiting: look once more.
            result = read_json(result_path(attempt_dir, launch.number))
            if result is None:
                await self._publish_events(entry)
                await self._finish(entry, self._died(entry))
                return
        if result is not None:
            await self._publish_events(self.journal.get(entry.command_id) or entry)
            await self._collect(entry, result)
            return
        await self._enforce_deadlines(entry, process)

    def _died(self, entry: Entry) -> dict[str, Any]:
        """The outcome of a stage process that ended without writing one."""
        kill = self._kills.get(entry.command_id)
        if kill is not None:
            return _failed(
                entry, kill.reason, f"stage process stopped by the agent ({kill.reason})"
            )
        log_tail = _read_tail(Path(entry.attempt_dir) / LOG)
        kind = kind_from_log(log_tail)
        return _failed(
            entry,
            kind,
            "stage process died without reporting an outcome (killed, or crashed)",
            {"log_tail": log_tail},
        )

    async def _enforce_deadlines(self, entry: Entry, process: ProcessId) -> None:
        now = time.monotonic()
        timeout = entry.run.get("timeout_s")
        launch = entry.launch
        assert launch is not None
        if (
            timeout
            and entry.command_id not in self._kills
            and time.time() - _first_start(entry) > float(timeout)
        ):
            self._kills[entry.command_id] = _Kill("timeout", now, now + self.config.kill_grace_s)
        kill = self._kills.get(entry.command_id)
        if kill is None:
            return
        if not kill.sent_term and now >= kill.term_at:
            kill.sent_term = True
            signal_group(process, signal.SIGTERM)
        elif now >= kill.kill_at:
            signal_group(process, signal.SIGKILL)

    async def _collect(self, entry: Entry, result: dict[str, Any]) -> None:
        status = result.get("status")
        run = entry.run
        if status == "paused":
            non_finite = list(result.get("non_finite") or [])
            # A result written before checkpoints were marked resumes from its own checkpoint.
            resume = result.get("resume_checkpoint", result.get("checkpoint"))
            updated = self.journal.append(
                "paused",
                entry.command_id,
                checkpoint=result.get("checkpoint"),
                resume_checkpoint=resume,
                step=result.get("step"),
                control_offset=result.get("control_offset", entry.control_offset),
            )
            assert updated is not None
            await self._send(
                Topic.STAGE_REPORTS,
                StagePaused(
                    **_entry_fields(entry, self.config.name),
                    step=int(result.get("step") or 0),
                    checkpoint=result.get("checkpoint"),
                    non_finite=non_finite,
                    resume_checkpoint=resume,
                ),
                key=run["pipeline_id"],
            )
            return
        if status == "succeeded":
            outputs = dict(result.get("outputs") or {})
            outputs.setdefault("log_path", str(Path(entry.attempt_dir) / LOG))
            outcome = {
                "type": StageSucceeded.TYPE,
                "data": StageSucceeded(
                    **_entry_fields(entry, self.config.name),
                    finished_at=float(result.get("finished_at") or time.time()),
                    outputs=outputs,
                ).model_dump(mode="json"),
            }
        else:
            kill = self._kills.get(entry.command_id)
            kind = (
                kill.reason
                if kill is not None and kill.reason == "timeout"
                else str(result.get("kind", "error"))
            )
            details = dict(result.get("details") or {})
            outcome = _failed(entry, kind, str(result.get("error", "")), details)
        await self._finish(entry, outcome)

    async def _finish(self, entry: Entry, outcome: dict[str, Any]) -> None:
        self.journal.append("finished", entry.command_id, outcome=outcome)
        self._kills.pop(entry.command_id, None)
        self._followers.pop(entry.command_id, None)
        final = self.journal.get(entry.command_id)
        assert final is not None and final.outcome is not None
        data = final.outcome["data"]
        self.stats.outcomes[str(data.get("kind", "succeeded"))] += 1
        await self._publish_outcome(final.outcome, replayed=False)
        self.journal.append("outcome_reported", entry.command_id)
        log.info(
            "stage finished",
            extra={"command_id": entry.command_id, "outcome": final.outcome["type"]},
        )
        with contextlib.suppress(Exception):
            await self._heartbeat()  # capacity is free again: say so now, not in 5 s

    async def _publish_events(self, entry: Entry) -> None:
        follower = self._followers.get(entry.command_id)
        if follower is None:
            follower = LineFollower(Path(entry.attempt_dir) / EVENTS, entry.events_offset)
            follower.lines_read = entry.events_published
            self._followers[entry.command_id] = follower
        if not follower.changed():
            return
        first = follower.lines_read
        events = follower.read()
        envelopes = []
        for index, event in enumerate(events, start=first):
            message = self._event_message(entry, event)
            if message is not None:
                envelopes.append(
                    Envelope.create(
                        message,
                        key=entry.run["pipeline_id"],
                        id=f"{entry.command_id}:event:{index}",  # the same on a re-publish
                    )
                )
        assert self._producer is not None
        try:
            if envelopes:
                await self._producer.send_many(Topic.STAGE_REPORTS, envelopes)
        except Exception:
            # Not on Kafka yet: read them again next time.
            self._followers.pop(entry.command_id, None)
            raise
        self.journal.append(
            "events_published",
            entry.command_id,
            count=follower.lines_read,
            offset=follower.offset,
        )

    def _event_message(self, entry: Entry, event: dict[str, Any]) -> Message | None:
        fields = _entry_fields(entry, self.config.name)
        if event.get("type") == "CheckpointSaved":
            return CheckpointSaved(
                **fields,
                step=int(event["step"]),
                path=str(event["path"]),
                reason=str(event.get("reason", "scheduled")),
                non_finite=list(event.get("non_finite") or []),
            )
        if event.get("type") == "ActionRefused":
            step = event.get("step")
            return ActionRefused(
                action_id=str(event["action_id"]),
                pipeline_id=fields["pipeline_id"],
                stage=fields["stage"],
                attempt=fields["attempt"],
                action=event["action"],
                reason=str(event.get("reason", "")),
                step=int(step) if step is not None else None,
                agent_id=fields["agent_id"],
                command_id=fields["command_id"],
                job_id=fields["job_id"],
            )
        if event.get("type") == "ActionApplied":
            return ActionApplied(
                **fields,
                action_id=str(event["action_id"]),
                action=event["action"],
                step=int(event["step"]),
                details=dict(event.get("details") or {}),
            )
        return None

    # --- recovery ------------------------------------------------------------------------------

    async def _recover(self) -> None:
        """After a restart: re-attach to stage processes that still run, collect the outcomes
        that were left behind, report the rest lost. Nothing is launched again."""
        for entry in list(self.journal.entries.values()):
            launch = entry.launch
            attempt_dir = Path(entry.attempt_dir)
            alive = launch is not None and is_alive(ProcessId(launch.pid, launch.pid_start))
            written = launch is not None and result_path(attempt_dir, launch.number).exists()
            action = decide_recovery(entry, alive, written).action
            if action == "adopt":
                log.info("re-attached to a running stage", extra={"command_id": entry.command_id})
            elif action == "lost":
                await self._finish(
                    entry,
                    _failed(
                        entry,
                        "lost",
                        "the stage process ended while the agent was down and left no outcome",
                    ),
                )
            elif action == "report":
                assert entry.outcome is not None
                await self._publish_outcome(entry.outcome, replayed=False)
                self.journal.append("outcome_reported", entry.command_id)
            # "collect" is done by the first check_stages; "none" needs nothing.

    # --- publishing ----------------------------------------------------------------------------

    async def _publish_outcome(self, outcome: dict[str, Any], *, replayed: bool) -> None:
        cls = MESSAGE_TYPES[outcome["type"]]
        data = dict(outcome["data"])
        if replayed and cls is StageSucceeded:
            data["replayed"] = True
        message = cls.model_validate(data)
        await self._send(Topic.STAGE_REPORTS, message, key=data["pipeline_id"])

    async def _send(self, topic: Topic, message: Message, *, key: str) -> None:
        assert self._producer is not None
        try:
            await self._producer.send(topic, Envelope.create(message, key=key))
        except Exception:
            self.stats.send_errors += 1
            raise


# --- helpers -------------------------------------------------------------------------------------


def _report_fields(command: RunStage, agent_id: str) -> dict[str, Any]:
    return {
        "pipeline_id": command.pipeline_id,
        "stage": command.stage,
        "attempt": command.attempt,
        "command_id": command.command_id,
        "agent_id": agent_id,
        "job_id": command.job_id,
    }


def _entry_fields(entry: Entry, agent_id: str) -> dict[str, Any]:
    run = entry.run
    return {
        "pipeline_id": run["pipeline_id"],
        "stage": run["stage"],
        "attempt": run["attempt"],
        "command_id": entry.command_id,
        "agent_id": agent_id,
        "job_id": run["job_id"],
    }


def _failed(
    entry: Entry, kind: str, error: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    message = StageFailed(
        **_entry_fields(entry, str(entry.run.get("agent_id", ""))),
        finished_at=time.time(),
        kind=kind,
        error=error,
        details=details or {},
    )
    return {"type": StageFailed.TYPE, "data": message.model_dump(mode="json")}


def _needed_gpus(entry: Entry) -> tuple[int, ...]:
    resources = entry.run.get("resources") or {}
    return tuple(range(int(resources.get("gpus", 0))))


def _first_start(entry: Entry) -> float:
    return entry.launches[0].started_at if entry.launches else time.time()


def _read_tail(path: Path) -> str:
    size = file_size(path)
    with contextlib.suppress(OSError), open(path, "rb") as fh:
        fh.seek(max(0, size - 16384))
        return tail(fh.read().decode("utf-8", "replace"))
    return ""
