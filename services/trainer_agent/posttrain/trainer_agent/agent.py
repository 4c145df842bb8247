"""The trainer agent: one per GPU node; a thin shell around ``core.decide``.

It announces itself and its capacity on ``posttrain.agents`` (heartbeats), reads the commands
addressed to it on ``posttrain.agent.commands`` (its own partition of the topic, keyed by agent
id), looks at its stage processes, and hands each of those observations to ``core.decide``,
then carries out the decision: journal events appended (``journal_file``), reports sent on
``posttrain.stage.reports``, processes started or signalled through a supervisor
(``supervisors``), control lines written. What the stage processes report is relayed by
``relay``.

Every decision comes from the journal: a RunStage id already finished is answered again from
it, one that runs is left alone, even across restarts. Stopping the agent leaves stages running:
the next agent on this work directory re-attaches to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from posttrain.events import Envelope
from posttrain.events.actions import action_of
from posttrain.events.kafka import EventConsumer, EventProducer, KafkaSettings
from posttrain.events.messages import Message, RunStage, StageControl
from posttrain.events.topics import Topic
from posttrain.service.http import EndpointServer
from posttrain.trainer_agent.core.decide import (
    ControlReceived,
    Decision,
    LaunchFailed,
    Looked,
    Observation,
    Record,
    Restarted,
    RunReceived,
    Send,
    Setup,
    SignalStage,
    Start,
    WriteControl,
    decide,
)
from posttrain.trainer_agent.core.events import Finished, Launched
from posttrain.trainer_agent.core.state import Entry, Launch, Status, usage
from posttrain.trainer_agent.endpoints import AgentStats, routes
from posttrain.trainer_agent.heartbeat import heartbeat, paused_count
from posttrain.trainer_agent.intake import assign_own_partition, read_commands
from posttrain.trainer_agent.journal_file import Journal
from posttrain.trainer_agent.launcher import Launcher
from posttrain.trainer_agent.relay import EventRelay
from posttrain.trainer_agent.stage_files import (
    CONTROL,
    LOG,
    append_message,
    read_result,
    read_tail,
    result_path,
    spec_path,
    unread_controls,
    write_json_atomic,
)
from posttrain.trainer_agent.stage_spec import stage_env, stage_spec
from posttrain.trainer_agent.supervisors.base import LaunchRequest, StageHandle, Supervisor
from posttrain.trainer_agent.supervisors.choice import LOCAL, RANKS, SSH, supervisor_for
from posttrain.trainer_agent.supervisors.local import LocalSupervisor
from posttrain.trainer_agent.supervisors.ranks import RanksSupervisor
from posttrain.trainer_agent.supervisors.ssh import SshSupervisor

log = logging.getLogger("posttrain.trainer_agent")


@dataclass(frozen=True)
class AgentConfig(Setup):
    """``Setup`` (what decisions need, with its defaults: the agent id, work dir, GPUs, labels,
    slots and cancel graces) and what only the shell uses."""

    heartbeat_s: float = 5.0
    poll_s: float = 0.2
    cwd: str = field(default_factory=os.getcwd)
    host: str = field(default_factory=socket.gethostname)
    # Extra environment for every stage process (e.g. OMP_NUM_THREADS).
    stage_env: tuple[tuple[str, str], ...] = ()
    # /healthz and /metrics; None: no HTTP server, 0: any free port.
    http_host: str = "127.0.0.1"
    http_port: int | None = None

    def setup(self) -> Setup:
        """What decisions need of this configuration, as a plain ``Setup``."""
        return Setup(**{f.name: getattr(self, f.name) for f in fields(Setup)})


def handle_of(launch: Launch) -> StageHandle:
    """The supervisor handle a journal's launch records."""
    return StageHandle(launch.supervisor, launch.pid, launch.pid_start, launch.host, launch.extra)


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        settings: KafkaSettings,
        launcher: Launcher | None = None,
        supervisors: Mapping[str, Supervisor] | None = None,
    ) -> None:
        """``launcher``: the local supervisor's (the zygote when None; one given is the
        caller's to close); ``supervisors``: supervisors by name in place of the shipped ones
        (``local``, ``ranks``, ``ssh``: ``supervisors.choice`` picks one per stage)."""
        self.config = config
        self.setup = config.setup()
        self.settings = settings
        self.work_dir = Path(config.work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(self.work_dir / "journal.jsonl")
        local = LocalSupervisor(launcher)
        self.supervisors: dict[str, Supervisor] = {
            LOCAL: local,
            RANKS: RanksSupervisor(local),
            SSH: SshSupervisor(settings, self.work_dir / "spill"),
        }
        self.supervisors.update(supervisors or {})
        self._producer: EventProducer | None = None
        self._consumer: EventConsumer | None = None
        self._relay = EventRelay(config.agent_id)
        self._stopping = asyncio.Event()
        self._deciding = asyncio.Lock()
        self.ready = asyncio.Event()
        self.stopped = asyncio.Event()
        self.stats = AgentStats(config.agent_id, config.heartbeat_s)
        self.http: EndpointServer | None = None

    # --- life cycle ----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        producer = EventProducer(self.settings)
        await producer.start()
        self._producer = producer
        consumer = EventConsumer(
            self.settings,
            [Topic.AGENT_COMMANDS],
            group_id=f"trainer-agent-{self.config.agent_id}",
            name=f"agent-{self.config.agent_id}",
            dead_letters=producer,
        )
        await consumer.start(subscribe=False)
        self._consumer = consumer
        await assign_own_partition(consumer, producer, self.settings, self.config.agent_id)
        local = self.supervisors[LOCAL]
        if isinstance(local, LocalSupervisor):
            local.launcher  # noqa: B018 (the zygote imports torch now, while we recover)
        await self._start_http()
        try:
            await self._recover()
            await self._heartbeat()
            self.ready.set()
            log.info(
                "agent started",
                extra={
                    "agent_id": self.config.agent_id,
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
                asyncio.create_task(read_commands(consumer, self.handle), name="commands"),
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
            for supervisor in self.supervisors.values():
                supervisor.close()
            self.journal.close()
            self.stopped.set()
            log.info(
                "agent stopped (its stages go on; starting it again re-attaches to them)",
                extra={"agent_id": self.config.agent_id},
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

    async def _heartbeat(self, *, stopping: bool = False) -> None:
        entries = self.journal.entries
        beat = heartbeat(
            self.setup,
            entries,
            host=self.config.host,
            interval_s=self.config.heartbeat_s,
            now=time.time(),
            stopping=stopping,
        )
        await self._send(beat, topic=Topic.AGENTS, key=self.config.agent_id)
        self.stats.last_heartbeat_at = beat.sent_at
        self.stats.running = len(beat.running)
        self.stats.paused = paused_count(entries)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            try:
                await self._heartbeat()
            except Exception as exc:
                log.warning("heartbeat not sent", extra={"error": str(exc)})

    # --- intake: commands (read by ``intake``) --------------------------------------------------

    async def handle(self, message: Message) -> None:
        if getattr(message, "agent_id", None) != self.config.agent_id:
            return  # another agent's command on our partition
        self.stats.commands[message.TYPE] += 1
        if isinstance(message, RunStage):
            await self._observe(RunReceived(message, time.time()), message.command_id)
        elif isinstance(message, StageControl) and action_of(message) is not None:
            await self._observe(ControlReceived(message, time.time()), message.run_command_id)

    # --- monitoring stage processes ------------------------------------------------------------

    async def _monitor(self) -> None:
        while True:
            try:
                await self.check_stages()
            except Exception:
                log.exception("stage monitor failed; retrying")
            await asyncio.sleep(self.config.poll_s)

    async def check_stages(self) -> None:
        for supervisor in self.supervisors.values():
            supervisor.reap()
        for entry in list(self.journal.entries.values()):
            if entry.status is Status.FINISHED and not entry.outcome_reported:
                await self._observe(Looked(entry.command_id, time.time(), alive=False), None)
            elif entry.status is Status.RUNNING and entry.launch is not None:
                await self._observe(await self._look(entry), None)

    async def _look(self, entry: Entry) -> Looked:
        """What a running stage's process and files say now (its events relayed first, so
        they are on Kafka before its outcome)."""
        launch = entry.launch
        assert launch is not None
        supervisor = self._supervisor(launch)
        handle = handle_of(launch)
        attempt_dir = Path(entry.attempt_dir)
        await supervisor.pull(handle, attempt_dir)
        await self._relay_events(entry.command_id)
        result = read_result(result_path(attempt_dir, launch.number))
        alive = True
        if result is None:
            alive = await supervisor.alive(handle)
            if not alive:
                # It may have written its result just before exiting: look once more.
                await supervisor.pull(handle, attempt_dir)
                result = read_result(result_path(attempt_dir, launch.number))
        if result is not None or not alive:
            await self._relay_events(entry.command_id)  # what it wrote before it ended
        log_tail = "" if alive or result is not None else read_tail(attempt_dir / LOG)
        unread: tuple[dict[str, Any], ...] = ()
        if result is not None and result.get("status") != "paused":
            unread = unread_controls(attempt_dir, int(result.get("control_offset", 0)))
        return Looked(entry.command_id, time.time(), alive, result, log_tail, None, unread)

    async def _relay_events(self, command_id: str) -> None:
        entry = self.journal.get(command_id)
        assert entry is not None and self._producer is not None
        published = await self._relay.publish(entry, self._producer)
        if published is not None:
            self.journal.append(published)

    # --- recovery ------------------------------------------------------------------------------

    async def _recover(self) -> None:
        """After a restart: re-attach to stage processes that still run, collect the outcomes
        that were left behind, report the rest lost. Nothing is launched again."""
        for entry in list(self.journal.entries.values()):
            launch = entry.launch
            alive = written = False
            if launch is not None and entry.status is Status.RUNNING:
                supervisor = self._supervisor(launch)
                await supervisor.pull(handle_of(launch), Path(entry.attempt_dir))
                alive = await supervisor.alive(handle_of(launch))
                written = result_path(Path(entry.attempt_dir), launch.number).exists()
            await self._observe(Restarted(entry.command_id, time.time(), alive, written), None)

    # --- carrying out decisions ----------------------------------------------------------------

    async def _observe(self, obs: Observation, command_id: str | None) -> None:
        """Decide on one observation and carry the decision out, one observation at a time:
        the commands and the monitor observe concurrently, and a decision carried out halfway
        (its outcome recorded, not yet sent) must not be seen by the next one (which would send
        the outcome again)."""
        async with self._deciding:
            await self._decide(obs, command_id)

    async def _decide(self, obs: Observation, command_id: str | None) -> None:
        decision = decide(self.journal.entries, obs, self.setup)
        if decision.name != "none":
            log.info(
                type(obs).__name__,
                extra={
                    "command_id": command_id or getattr(obs, "command_id", None),
                    "decision": decision.name,
                    "reason": decision.reason,
                    **decision.fields,
                },
            )
        self._count(decision)
        await self._carry_out(decision)

    def _count(self, decision: Decision) -> None:
        if decision.name == "replay":
            self.stats.replayed += 1
        elif decision.name == "refuse":
            self.stats.refused += 1
        elif decision.name == "reject":
            self.stats.rejected += 1

    async def _carry_out(self, decision: Decision) -> None:
        finished = False
        for action in decision.actions:
            if isinstance(action, Record):
                self.journal.append(action.event)
                if isinstance(action.event, Finished):
                    finished = True
                    self._relay.forget(action.event.command_id)
                    kind = action.event.outcome["data"].get("kind", "succeeded")
                    self.stats.outcomes[str(kind)] += 1
            elif isinstance(action, Send):
                await self._send(action.message, key=action.key)
            elif isinstance(action, Start):
                if not await self._start(action):
                    return  # the failure was decided and carried out instead
            elif isinstance(action, SignalStage):
                entry = self.journal.get(action.command_id)
                if entry is not None and entry.launch is not None:
                    await self._supervisor(entry.launch).signal(
                        handle_of(entry.launch), action.signal
                    )
            elif isinstance(action, WriteControl):
                entry = self.journal.get(action.command_id)
                assert entry is not None
                control = action.command
                append_message(Path(entry.attempt_dir) / CONTROL, control, control.pipeline_id)
                if entry.status is Status.RUNNING and entry.launch is not None:
                    await self._supervisor(entry.launch).push(
                        handle_of(entry.launch), Path(entry.attempt_dir)
                    )
        if finished:
            with contextlib.suppress(Exception):
                await self._heartbeat()  # capacity is free again: say so now, not in 5 s

    async def _start(self, start: Start) -> bool:
        """Start a launch; False if the first launch could not start (the stage failed)."""
        entry = self.journal.get(start.command_id)
        assert entry is not None
        attempt_dir = Path(entry.attempt_dir)
        os.makedirs(attempt_dir, exist_ok=True)
        write_json_atomic(
            spec_path(attempt_dir, start.number),
            stage_spec(entry, start, self.work_dir, self.settings),
        )
        env = stage_env(
            entry,
            start.gpu_ids,
            agent_id=self.config.agent_id,
            work_dir=self.work_dir,
            settings=self.settings,
            extra=self.config.stage_env,
        )
        name = supervisor_for(entry.run)
        request = LaunchRequest(
            attempt_dir, start.number, env, self.config.cwd, start.gpu_ids, entry.run
        )
        try:
            handle = await self.supervisors[name].start(request)
        except Exception as exc:
            if start.number > 1:
                raise  # a resume that cannot start leaves the stage paused
            # Within the observation that started it (its lock held).
            await self._decide(LaunchFailed(start.command_id, str(exc), time.time()), None)
            return False
        self.stats.launches += 1
        self.journal.append(
            Launched(
                start.command_id,
                pid=handle.pid,
                pid_start=handle.start,
                started_at=time.time(),
                resume_from=start.resume_from,
                gpu_ids=start.gpu_ids,
                control_offset=start.control_offset,
                supervisor=handle.supervisor,
                host=handle.host,
                extra=dict(handle.extra),
            )
        )
        log.info(
            "stage launched",
            extra={
                "command_id": start.command_id,
                "pid": handle.pid,
                "launch": start.number,
                "supervisor": handle.supervisor,
            },
        )
        if start.started is not None:
            await self._send(start.started, key=start.started.pipeline_id)
        return True

    def _supervisor(self, launch: Launch) -> Supervisor:
        return self.supervisors.get(launch.supervisor) or self.supervisors[LOCAL]

    async def _send(
        self, message: Message, *, key: str, topic: Topic = Topic.STAGE_REPORTS
    ) -> None:
        assert self._producer is not None
        try:
            await self._producer.send(topic, Envelope.create(message, key=key))
        except Exception:
            self.stats.send_errors += 1
            raise
