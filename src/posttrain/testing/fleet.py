"""A simulated fleet: many scripted agents in a few processes, pipelines submitted at a steady
rate, one or more orchestrator processes, and what the run must show: every pipeline ended as
scripted, each (stage, attempt) dispatched once, no RunStage refused for lack of capacity.

Each shard process plays many agents on one producer and one consumer: they heartbeat with
their GPUs, slots and labels, take RunStage (rejecting it, as a real agent would, when it finds
no free slot), report StageStarted, and StageSucceeded or StageFailed after the stage's
scripted time. Some agents go down for a while (no heartbeats, their stages abandoned, commands
dropped) and come back. What each stage does is written in the pipeline itself (the ``command``
task's argv and env), so whichever shard runs it does the same.

    from posttrain.testing.fleet import FleetScript, run_fleet
    report = await run_fleet(settings, FleetScript(agents=50, pipelines=200), workdir)
    assert report.problems() == []
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from posttrain.events import Envelope, decode
from posttrain.events.codec import HEADER_TYPE
from posttrain.events.kafka import EventProducer, KafkaSettings
from posttrain.events.kafka.producer import partition_for
from posttrain.events.messages import (
    AgentHeartbeat,
    RunStage,
    StageFailed,
    StageRejected,
    StageStarted,
    StageSucceeded,
    SubmitPipeline,
)
from posttrain.events.messages.stage import report_fields
from posttrain.events.topics import TOPICS, Topic
from posttrain.service.collector import EVENT_LOOP_THRESHOLDS, quiet_collector
from posttrain.testing.orchestrator import start_orchestrator
from posttrain.testing.services import ServiceProcess
from posttrain.testing.waiting import wait_until

TRAINING = "a100"  # the label training stages need; every other agent has it


@dataclass(frozen=True)
class FleetScript:
    """What the simulation does. Every choice is derived from these numbers: two runs of the
    same script submit the same pipelines and script the same failures and outages."""

    agents: int = 1000
    processes: int = 3  # two of the six agent command partitions each
    slots: int = 2
    heartbeat_s: float = 1.0
    pipelines: int = 10_000
    submit_over_s: float = 180.0
    stage_s: tuple[float, float] = (0.05, 0.4)  # each stage's time, spread over this range
    retry_every: int = 10  # every n-th pipeline: ppo fails its first attempt, then succeeds
    fail_every: int = 50  # every n-th pipeline: report fails for good (the pipeline fails)
    outages: int = 10  # agents that go down once, each for ``outage_s``
    outage_s: float = 8.0
    deadline_s: float = 600.0  # the whole run gives up after this

    def agent_ids(self) -> list[str]:
        return [f"fleet-{i:05d}" for i in range(self.agents)]

    def command_partitions(self, n: int) -> list[int]:
        """The partitions of the agent commands topic shard ``n`` reads."""
        return list(range(n, TOPICS[Topic.AGENT_COMMANDS].partitions, self.processes))

    def shard(self, n: int) -> list[str]:
        """The agents shard ``n`` plays: those whose commands land on its partitions. A real
        agent reads its own partition only; a shard reading every partition for a quarter of
        the agents fetched and parsed every RunStage of the fleet in each process, work that
        a fleet of machines does not do and that slowed the agents it was simulating."""
        mine = set(self.command_partitions(n))
        partitions = TOPICS[Topic.AGENT_COMMANDS].partitions
        return [a for a in self.agent_ids() if partition_for(a.encode(), partitions) in mine]

    def outage_of(self, index: int) -> tuple[float, float] | None:
        """(down at, back at), in seconds after its shard's first RunStage, for agent
        ``index``."""
        if self.outages <= 0 or index % max(1, self.agents // self.outages) != 0:
            return None
        k = index // max(1, self.agents // self.outages)
        if k >= self.outages:
            return None
        down = self.submit_over_s * (0.2 + 0.6 * k / max(1, self.outages))
        return down, down + self.outage_s

    def expected_to_fail(self, index: int) -> bool:
        return self.fail_every > 0 and index % self.fail_every == self.fail_every - 1


# --- the pipelines --------------------------------------------------------------------------

TEMPLATE: dict[str, list[str]] = {
    "prep": [],
    "sft": ["prep"],
    "grpo": ["sft"],
    "dpo": ["sft"],
    "ppo": ["sft"],
    "eval_grpo": ["grpo"],
    "eval_dpo": ["dpo"],
    "report": ["eval_grpo", "eval_dpo", "ppo"],
}
TRAINING_STAGES = frozenset({"sft", "grpo", "dpo", "ppo"})


# FLEET_FAIL_ATTEMPTS: the attempts that fail, or this for every one.
EVERY_ATTEMPT = "*"


def pipeline_id(run: str, index: int) -> str:
    return f"{run}-p{index:06d}"


def pipeline_stages(script: FleetScript, pid: str, index: int) -> list[dict[str, Any]]:
    """The eight stages of pipeline ``index``: its script (time, failing attempts) in each
    stage's argv and env."""
    low, high = script.stage_s
    stages = []
    for name, deps in TEMPLATE.items():
        share = zlib.crc32(f"{pid}/{name}".encode()) % 1000 / 1000
        fails: list[int | str] = []
        retries = {"max_attempts": 1, "backoff_s": 0.2}
        if name == "ppo" and script.retry_every > 0 and index % script.retry_every == 0:
            fails, retries = [1], {"max_attempts": 2, "backoff_s": 0.2}
        if name == "report" and script.expected_to_fail(index):
            fails = [EVERY_ATTEMPT]  # a lost attempt is tried again: that one must fail too
        stages.append(
            {
                "name": name,
                "task": "command",
                "params": {
                    "argv": ["sleep", f"{low + share * (high - low):.3f}"],
                    "env": {"FLEET_FAIL_ATTEMPTS": ",".join(map(str, fails))},
                },
                "depends_on": deps,
                "retries": retries,
                "resources": {"labels": [TRAINING] if name in TRAINING_STAGES else []},
            }
        )
    return stages


def _scripted(run: RunStage) -> tuple[float, bool]:
    """(seconds, fails) for one attempt, as its pipeline scripted it."""
    seconds = float(run.params["argv"][1])
    fails = str(run.params.get("env", {}).get("FLEET_FAIL_ATTEMPTS", "")).split(",")
    return seconds, EVERY_ATTEMPT in fails or str(run.attempt) in fails


# --- one shard: many agents in one process --------------------------------------------------


@dataclass
class _Agent:
    agent_id: str
    index: int
    labels: list[str]
    running: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    down: bool = False


class _Shard:
    def __init__(
        self, settings: KafkaSettings, script: FleetScript, n: int, out: Path, stop: ProcessEvent
    ) -> None:
        self.settings = settings
        self.script = script
        self.n = n
        mine = set(script.shard(n))
        self.agents = {
            a: _Agent(a, i, [TRAINING] if i % 2 == 0 else [])
            for i, a in enumerate(script.agent_ids())
            if a in mine
        }
        self.keys = {a.encode(): a for a in self.agents}
        self.out = out
        self.stop = stop
        self.records: list[dict[str, Any]] = []
        self.replies: set[asyncio.Task[None]] = set()  # rejections being sent
        self.producer = EventProducer(settings, linger_ms=2)
        self.started = time.time()  # when the first RunStage came: outages count from there
        self.began = asyncio.Event()

    async def run(self, ready: ProcessEvent) -> None:
        await self.producer.start()
        # The consumer settings a trainer agent ships with (``trainer_agent.intake``): a
        # shorter fetch wait here would measure a faster agent than the one users run.
        consumer = AIOKafkaConsumer(
            **self.settings.client_options(),
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await consumer.start()
        topic = self.settings.topic(Topic.AGENT_COMMANDS)
        tps = [TopicPartition(topic, p) for p in self.script.command_partitions(self.n)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        await self._beat()
        ready.set()
        tasks = [asyncio.create_task(self._heartbeats()), asyncio.create_task(self._outages())]
        try:
            while not self.stop.is_set():
                batches = await consumer.getmany(timeout_ms=200)
                now = time.time()
                for records in batches.values():
                    for record in records:
                        agent_id = self.keys.get(record.key)
                        if agent_id is not None:
                            self._command(self.agents[agent_id], record, now)
        finally:
            for task in tasks:
                task.cancel()
            for agent in self.agents.values():
                for task in agent.running.values():
                    task.cancel()
            await consumer.stop()
            with contextlib.suppress(Exception):
                await self.producer.stop()
            self.out.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in self.records))

    def _command(self, agent: _Agent, record: Any, now: float) -> None:
        command = decode(record.value, record.headers).data
        if not isinstance(command, RunStage):
            return  # CancelStage: nothing in this script cancels
        if not self.began.is_set():
            self.started = now
            self.began.set()
        ids = {"pipeline": command.pipeline_id, "stage": command.stage, "attempt": command.attempt}
        # ``written``: the record's create time, stamped by the orchestrator's producer as the
        # decision was handed to it (before its transaction commits).
        written = record.timestamp / 1000
        seen = {"agent": agent.agent_id, "received": now, "written": written, **ids}
        if agent.down:
            self.records.append({"kind": "dropped", **seen})
            return
        if command.command_id in agent.running:
            return  # a redelivery of what runs
        if len(agent.running) >= self.script.slots:
            self.records.append({"kind": "rejected", **seen})
            reply = asyncio.create_task(self._reject(command))
            self.replies.add(reply)
            reply.add_done_callback(self.replies.discard)
            return
        run = {"kind": "run", **seen}
        self.records.append(run)
        agent.running[command.command_id] = asyncio.create_task(self._run(agent, command, run))

    def _report(self, run: RunStage, cls: type[Any], **fields: Any) -> Envelope[Any]:
        message = cls(**report_fields(run, run.agent_id), **fields)
        return Envelope.create(message, key=run.pipeline_id)

    async def _reject(self, run: RunStage) -> None:
        await self.producer.send(
            Topic.STAGE_REPORTS,
            self._report(run, StageRejected, reason="agent runs as many stages as it has slots"),
        )

    async def _run(self, agent: _Agent, run: RunStage, record: dict[str, Any]) -> None:
        try:
            seconds, fails = _scripted(run)
            started = time.time()
            await self.producer.send(
                Topic.STAGE_REPORTS, self._report(run, StageStarted, started_at=started)
            )
            await asyncio.sleep(seconds)
            finished = time.time()
            if fails:
                report = self._report(
                    run, StageFailed, finished_at=finished, kind="error", error="scripted failure"
                )
            else:
                report = self._report(
                    run,
                    StageSucceeded,
                    finished_at=finished,
                    outputs={"checkpoint": f"/fleet/{run.command_id}"},
                )
            # The slot is free once the outcome is sent, as a real agent's journal has it.
            agent.running.pop(run.command_id, None)
            await self.producer.send(Topic.STAGE_REPORTS, report)
            record["finished"] = finished
            record["outcome"] = "failed" if fails else "succeeded"
        finally:
            agent.running.pop(run.command_id, None)

    def _beats(self) -> list[Envelope[Any]]:
        now = time.time()
        return [
            Envelope.create(
                AgentHeartbeat(
                    agent_id=a.agent_id,
                    host="fleet",
                    gpus=0,
                    free_gpus=0,
                    labels=a.labels,
                    running=sorted(a.running),
                    slots=self.script.slots,
                    interval_s=self.script.heartbeat_s,
                    sent_at=now,
                ),
                key=a.agent_id,
            )
            for a in self.agents.values()
            if not a.down
        ]

    async def _beat(self) -> None:
        await self.producer.send_many(Topic.AGENTS, self._beats())

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.script.heartbeat_s)
            with contextlib.suppress(Exception):  # a slow broker: the next beat goes on
                await self._beat()

    async def _outages(self) -> None:
        await self.began.wait()
        plan = sorted(
            (window, a)
            for a in self.agents.values()
            if (window := self.script.outage_of(a.index)) is not None
        )
        for (down_at, back_at), agent in plan:
            await asyncio.sleep(max(0.0, self.started + down_at - time.time()))
            agent.down = True  # as a crash: its stages are abandoned, never reported
            for task in agent.running.values():
                task.cancel()
            agent.running.clear()
            self.records.append({"kind": "down", "agent": agent.agent_id, "at": time.time()})
            asyncio.get_running_loop().call_at(
                asyncio.get_running_loop().time() + (back_at - down_at),
                self._back,
                agent,
            )

    def _back(self, agent: _Agent) -> None:
        agent.down = False
        self.records.append({"kind": "back", "agent": agent.agent_id, "at": time.time()})


def _shard_main(
    settings: KafkaSettings,
    script: FleetScript,
    n: int,
    out: Path,
    ready: ProcessEvent,
    stop: ProcessEvent,
) -> None:
    async def main() -> None:  # the Kafka clients need the running loop
        await _Shard(settings, script, n, out, stop).run(ready)

    quiet_collector_of_standin()
    asyncio.run(main())


def quiet_collector_of_standin() -> None:
    """For a process that stands in for many machines: a shard plays hundreds of agents, so a
    pause of its collector stalls all of them at once, which a fleet of machines never does
    (with CPython's defaults a full collection measured up to 144 ms, several times a run, in
    each shard and in the bench's process, which stamps submissions and tallies the log). What
    start-up built leaves the collector's sight; young objects are collected as rarely as in
    the orchestrator."""
    quiet_collector(EVENT_LOOP_THRESHOLDS, freeze=True)


# --- the run --------------------------------------------------------------------------------


@dataclass
class FleetReport:
    """What a run showed. ``problems()`` lists every broken invariant."""

    script: FleetScript
    orchestrators: int
    submitted: int = 0
    succeeded: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    expected_failed: set[str] = field(default_factory=set)
    dispatched: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    rejected_events: int = 0
    lost: int = 0
    lost_in: set[str] = field(default_factory=set)  # pipelines with a stage lost with its agent
    events: int = 0
    seconds: float = 0.0  # from the first submission to the last pipeline's end
    records: list[dict[str, Any]] = field(default_factory=list)
    dispatch_ms: list[float] = field(default_factory=list)
    # The same latencies in two legs: ready -> RunStage written by the orchestrator (the input
    # reaching it, waiting for its batch, the decision), and written -> received (the
    # transaction's commit, the agent's fetch).
    decide_ms: list[float] = field(default_factory=list)
    deliver_ms: list[float] = field(default_factory=list)

    @property
    def refused(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["kind"] == "rejected"]

    @property
    def ended(self) -> int:
        return len(self.succeeded | self.failed)

    def problems(self) -> list[str]:
        found = []
        if self.ended != self.submitted:
            found.append(f"{self.submitted - self.ended} of {self.submitted} pipelines never ended")
        if self.failed != self.expected_failed:
            wrong = sorted(self.failed ^ self.expected_failed)
            found.append(
                f"{len(wrong)} pipelines ended otherwise than scripted: {wrong[:5]} "
                f"({len(self.lost_in.intersection(wrong))} of them lost a stage with its agent)"
            )
        twice = [k for k, n in self.dispatched.items() if n > 1]
        if twice:
            found.append(f"{len(twice)} (stage, attempt) dispatched more than once: {twice[:5]}")
        if self.refused or self.rejected_events:
            found.append(
                f"{len(self.refused)} RunStage refused for lack of a slot "
                f"({self.rejected_events} StageRejected on the log)"
            )
        return found


async def _submit(
    settings: KafkaSettings, script: FleetScript, run: str, report: FleetReport
) -> dict[str, float]:
    """Submit the script's pipelines at a steady rate; returns when each was sent."""
    sent: dict[str, float] = {}
    per_step = max(1, round(script.pipelines * 0.1 / max(script.submit_over_s, 0.1)))
    step = script.submit_over_s * per_step / max(1, script.pipelines)  # seconds between batches
    began = time.time()
    async with EventProducer(settings, linger_ms=2) as producer:
        for first in range(0, script.pipelines, per_step):
            await asyncio.sleep(max(0.0, began + first / per_step * step - time.time()))
            batch = []
            for index in range(first, min(first + per_step, script.pipelines)):
                pid = pipeline_id(run, index)
                if script.expected_to_fail(index):
                    report.expected_failed.add(pid)
                batch.append(
                    Envelope.create(
                        SubmitPipeline(
                            pipeline_id=pid,
                            name=pid,
                            stages=pipeline_stages(script, pid, index),
                        ),
                        key=pid,
                    )
                )
            now = time.time()
            await producer.send_many(Topic.PIPELINE_COMMANDS, batch)
            for envelope in batch:
                sent[envelope.key] = now
            report.submitted = len(sent)
    return sent


async def _follow(
    settings: KafkaSettings, report: FleetReport, run: str, done: asyncio.Event, stop: asyncio.Event
) -> None:
    """Tally the event log as it grows, until every submitted pipeline has ended."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    topic = settings.topic(Topic.PIPELINE_EVENTS)
    tps = [TopicPartition(topic, p) for p in range(TOPICS[Topic.PIPELINE_EVENTS].partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batches.values():
                for record in records:
                    if not record.key.decode().startswith(run):
                        continue
                    report.events += 1
                    kind = _type_of(record)
                    if kind == "StageDispatched":
                        data = decode(record.value, record.headers).data
                        report.dispatched[(data.pipeline_id, data.stage, data.attempt)] += 1
                    elif kind == "StageRejected":
                        report.rejected_events += 1
                    elif kind == "StageLost":
                        report.lost += 1
                        report.lost_in.add(record.key.decode())
                    elif kind == "PipelineSucceeded":
                        report.succeeded.add(record.key.decode())
                    elif kind == "PipelineFailed":
                        report.failed.add(record.key.decode())
            if report.submitted == report.script.pipelines and report.ended >= report.submitted:
                done.set()
    finally:
        await consumer.stop()


def _type_of(record: Any) -> str:
    for key, value in record.headers or ():
        if key == HEADER_TYPE:
            return bytes(value).decode()
    return decode(record.value, record.headers).type


def _owned(log: Path) -> list[int] | None:
    """The partitions an orchestrator's log last said it owns."""
    if not log.exists():
        return None
    last = None
    for line in log.read_bytes().splitlines():
        if b"owns partitions" in line:
            with contextlib.suppress(orjson.JSONDecodeError):
                last = orjson.loads(line).get("partitions")
    return last


def dispatch_legs(
    records: Sequence[dict[str, Any]], submitted: dict[str, float]
) -> list[tuple[float, float, float]]:
    """(ready, written, received), in milliseconds, for every stage whose first attempt ran on
    a live agent: when it became ready (its pipeline submitted, or its last dependency's
    success sent by its agent), when the orchestrator wrote its first RunStage, and when an
    agent received that."""
    finished: dict[tuple[str, str], float] = {}
    first: dict[tuple[str, str], tuple[float, float]] = {}
    for r in records:
        if r["kind"] == "run" and r.get("outcome") == "succeeded":
            finished[(r["pipeline"], r["stage"])] = r["finished"]
    for r in records:
        if r["kind"] in ("run", "rejected", "dropped") and r["attempt"] == 1:
            key = (r["pipeline"], r["stage"])
            seen = (r["received"], r.get("written", r["received"]))
            first[key] = min(first.get(key, seen), seen)
    out = []
    for (pid, stage), (received, written) in first.items():
        deps = TEMPLATE[stage]
        if not deps:
            ready = submitted.get(pid)
        elif all((pid, d) in finished for d in deps):
            ready = max(finished[(pid, d)] for d in deps)
        else:
            ready = None  # a dependency never succeeded on a live agent's record
        if ready is not None:
            out.append((ready * 1000, written * 1000, received * 1000))
    return out


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def _shard_records(workdir: Path, processes: int) -> list[dict[str, Any]]:
    """What every shard recorded (each writes its file as it stops)."""
    records: list[dict[str, Any]] = []
    for n in range(processes):
        path = workdir / f"shard-{n}.jsonl"
        if path.exists():
            records.extend(orjson.loads(line) for line in path.read_bytes().splitlines())
    return records


async def run_fleet(
    settings: KafkaSettings,
    script: FleetScript,
    workdir: Path,
    *,
    orchestrators: int = 1,
    orchestrator_args: Sequence[str] = (),
    database_url: str | None = None,
) -> FleetReport:
    """Run the script against ``orchestrators`` orchestrator processes (static members
    ``fleet-0``, ``fleet-1``, ...) on ``settings``' namespace; their logs go to ``workdir``.
    ``orchestrator_args`` come last (they win); with ``database_url`` the orchestrators project
    their read model into that database, as a deployment's do."""
    if not 0 < script.processes <= TOPICS[Topic.AGENT_COMMANDS].partitions:
        raise ValueError(
            f"processes: {script.processes} shards for "
            f"{TOPICS[Topic.AGENT_COMMANDS].partitions} agent command partitions"
        )
    _make_dir(workdir)
    run = f"r{zlib.crc32(str(workdir).encode()):08x}"
    report = FleetReport(script, orchestrators)
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    shards = []
    readies = []
    for n in range(script.processes):
        ready = context.Event()
        process = context.Process(
            target=_shard_main,
            args=(settings, script, n, workdir / f"shard-{n}.jsonl", ready, stop),
            name=f"fleet-shard-{n}",
            daemon=True,
        )
        process.start()
        shards.append(process)
        readies.append(ready)
    services: list[ServiceProcess] = []
    follow_stop = asyncio.Event()
    done = asyncio.Event()
    follower = asyncio.create_task(_follow(settings, report, run, done, follow_stop))
    try:

        def shards_ready() -> bool:
            dead = [p.name for p in shards if not p.is_alive()]
            if dead:
                raise RuntimeError(f"fleet: shard processes {dead} died while starting")
            return all(r.is_set() for r in readies)

        await wait_until(shards_ready, timeout=120, interval=0.1, what="the agent shards")
        logs = [workdir / f"orchestrator-{i}.log" for i in range(orchestrators)]
        for i, log in enumerate(logs):
            services.append(
                start_orchestrator(
                    settings,
                    log,
                    "--instance-id",
                    f"fleet-{i}",
                    "--replay-processes",
                    "0",
                    # A loaded machine starves the event loop for seconds at times: a short
                    # session would expire and rebalance over and over (a restarted static
                    # member takes its partitions back at once anyway).
                    "--session-timeout-ms",
                    "10000",
                    *orchestrator_args,
                    database_url=database_url,
                )
            )
        partitions = TOPICS[Topic.PIPELINE_EVENTS].partitions

        def split() -> bool:
            owned = [_owned(log) for log in logs]
            if any(not o for o in owned):
                return False
            together = [p for o in owned for p in o or []]
            return sorted(together) == list(range(partitions))

        await wait_until(
            split, timeout=120, interval=0.1, what="the orchestrators to share every partition"
        )
        began = time.time()
        sent = await _submit(settings, script, run, report)
        remaining = script.deadline_s - (time.time() - began)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), max(1.0, remaining))
        report.seconds = time.time() - began
        await asyncio.sleep(1.0)  # reports still in flight reach the shards' records
    finally:
        stop.set()
        for process in shards:
            process.join(60)
            if process.is_alive():
                process.kill()
        for service in services:
            if service.running:
                service.stop()
        follow_stop.set()
        await asyncio.gather(follower, return_exceptions=True)
    report.records = _shard_records(workdir, script.processes)
    legs = dispatch_legs(report.records, sent)
    report.dispatch_ms = [received - ready for ready, _, received in legs]
    report.decide_ms = [written - ready for ready, written, _ in legs]
    report.deliver_ms = [received - written for _, written, received in legs]
    return report
