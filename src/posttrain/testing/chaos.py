"""A chaos run of the whole platform, for the resilience suite (tests/chaos) and ``python -m
bench.chaos``: the platform up (``posttrain.testing.platform``), a real pipeline (preprocess ->
SFT -> [GRPO, DPO] -> evaluate, real tiny training) submitted through a gateway, a seeded plan
of kills (and broker/database restarts) carried out while it runs, then every invariant
(``posttrain.testing.invariants``) read back from what the run left.

Two plans: ``resilience_plan`` (one instance of each service, each killed at least once, the
broker and PostgreSQL restarted once each, on a private stack) and ``scale_out_plan`` (two
instances of each service and three agents, one instance of each service killed for good).

The seed comes from POSTTRAIN_CHAOS_SEED (a failure is replayed with the seed it printed), else
it is drawn; the plan is a function of the seed alone. The moments are offsets in seconds from
the previous action, so a replay makes the same kills in the same order at the same pace.

The plan is carried out whole, however fast the machine trains: the workload is a pipeline at a
time, and while actions remain, the next pipeline is submitted as soon as one ends (a fast
machine runs more of them). Every pipeline of the run is checked against every invariant.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg

from posttrain.events.kafka import KafkaSettings, await_coordinators, ensure_topics
from posttrain.events.topics import Topic
from posttrain.metrics_ingest.queries import get_job_points
from posttrain.testing import invariants
from posttrain.testing.platform import ROOT, AlertReceiver, Platform, PrivateStack, http_json
from posttrain.testing.waiting import wait_until
from posttrain.trainer_agent.witness import read_witness

DATA = ROOT / "examples" / "data"
TERMINAL = ("succeeded", "failed", "cancelled", "rejected")
RETRIES = {"max_attempts": 3, "backoff_s": 1}


def seed_from_env() -> int:
    """POSTTRAIN_CHAOS_SEED, else a fresh seed (printed with the outcome, to replay it)."""
    raw = os.environ.get("POSTTRAIN_CHAOS_SEED")
    return int(raw) if raw else random.SystemRandom().randrange(1, 2**31)


def pipeline(pipeline_id: str) -> dict[str, Any]:
    """The example pipeline's shape with few steps: each stage trains for seconds on an idle
    2-core machine (tens of seconds on a loaded one)."""
    sft = "${train_sft.checkpoint}"
    return {
        "pipeline_id": pipeline_id,
        "name": "chaos",
        "stages": [
            {
                "name": "preprocess",
                "task": "preprocess_dataset",
                "retries": RETRIES,
                "params": {
                    "input_path": str(DATA / "addition_train.jsonl"),
                    "model_path": "tiny-llama",
                },
            },
            _training(
                "train_sft",
                ["preprocess"],
                algorithm="sft",
                model_path="tiny-llama",
                train_data_path="${preprocess.outputs.dataset}",
                max_steps=20,
                batch_size=32,
                learning_rate=0.003,
                lr_scheduler_type="constant",
                max_length=16,
                seed=0,
            ),
            _training(
                "train_grpo",
                ["train_sft"],
                algorithm="grpo",
                model_path=sft,
                train_data_path=str(DATA / "addition_train.jsonl"),
                reward_funcs=["arithmetic"],
                max_steps=8,
                batch_size=8,
                num_generations=4,
                max_completion_length=3,
                learning_rate=0.0002,
                lr_scheduler_type="constant",
                kl_coef=0.1,
                seed=1,
            ),
            _training(
                "train_dpo",
                ["train_sft"],
                algorithm="dpo",
                model_path=sft,
                train_data_path=str(DATA / "addition_dpo.jsonl"),
                max_steps=8,
                batch_size=8,
                learning_rate=0.0002,
                kl_coef=0.1,
                max_length=16,
                seed=0,
            ),
            {
                "name": "evaluate",
                "task": "run_evaluation",
                "depends_on": ["train_grpo", "train_dpo"],
                "retries": RETRIES,
                "params": {
                    "models": [sft, "${train_grpo.checkpoint}", "${train_dpo.checkpoint}"],
                    "eval_data_path": str(DATA / "addition_eval.jsonl"),
                    "reward_funcs": ["arithmetic"],
                },
            },
        ],
    }


def _training(name: str, after: list[str], **config: Any) -> dict[str, Any]:
    return {
        "name": name,
        "task": "train_model",
        "depends_on": after,
        "retries": RETRIES,
        "params": {"config": {**config, "num_threads": 1}},
    }


def diagnostics_config(alert_url: str) -> dict[str, Any]:
    """Rules tuned to fire on a healthy tiny run, so that alerts and actions happen under the
    kills: a new best reward (an action: force_checkpoint) and a KL above a tiny target."""
    return {
        "default": {
            "detectors": {
                "new_best_reward": {"warmup_points": 3, "smoothing": 2, "min_steps_between": 5},
                "kl": {"target": 1e-6, "smoothing": 1},
            },
            "alerts": {
                "channels": [
                    {"name": "chaos", "kind": "webhook", "url": alert_url, "min_severity": "info"}
                ],
                "cooldown_s": 0,
                "backoff_s": 0.2,
            },
        }
    }


@dataclass
class Action:
    """At ``after_s`` seconds past the previous action: ``kind`` (kill, retire, restart) on
    ``target`` (a platform slot, or kafka / postgres)."""

    kind: str
    target: str
    after_s: float
    back_after_s: float = 0.0  # a killed service starts again this much later


@dataclass
class Outcome:
    seed: int
    # The workload: the pipelines submitted one after another while the plan was carried out.
    pipeline_ids: list[str] = field(default_factory=list)
    performed: list[Action] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    alerts: int = 0
    actions: int = 0
    seconds: float = 0.0
    # Attempts that did not succeed, with why: retries the kills caused are legitimate, and
    # a replay starts from these.
    failures: list[str] = field(default_factory=list)
    # Services started again after they exited before they were ready (restart: on-failure).
    start_failures: dict[str, int] = field(default_factory=dict)

    def kill_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for a in self.performed:
            counts[a.target] = counts.get(a.target, 0) + 1
        return counts

    def summary(self) -> str:
        pipelines = ", ".join(
            f"{p} {self.statuses.get(p, 'unfinished')}" for p in self.pipeline_ids
        )
        return (
            f"chaos seed {self.seed} (replay: POSTTRAIN_CHAOS_SEED={self.seed}); pipelines "
            f"[{pipelines}] in {self.seconds:.0f} s; kills "
            f"{self.kill_counts()}; alerts delivered {self.alerts}, actions requested "
            f"{self.actions}; start failures {self.start_failures}; failed attempts "
            f"{self.failures}; violations {len(self.violations)}"
            + "".join(f"\n  {v}" for v in self.violations)
        )


async def submit(platform: Platform, body: dict[str, Any], timeout: float = 120) -> None:
    """POST the pipeline to any gateway that answers, again under the same Idempotency-Key
    until one accepts it (a gateway may be down, or the database restarting)."""
    last: Any = None

    async def accepted() -> bool:
        nonlocal last
        for url in platform.gateway_urls():
            try:
                status, doc = await asyncio.to_thread(
                    http_json,
                    f"{url}/v1/pipelines",
                    body,
                    {"Idempotency-Key": body["pipeline_id"]},
                )
            except OSError as exc:
                last = exc
                continue
            last = (status, doc)
            if status == 202:
                return True
        return False

    await wait_until(accepted, timeout=timeout, interval=0.5, what=f"a gateway to accept ({last})")


async def pipeline_status(platform: Platform, pipeline_id: str) -> dict[str, Any] | None:
    """The pipeline's status from the first gateway that answers it."""
    for url in platform.gateway_urls():
        try:
            status, doc = await asyncio.to_thread(http_json, f"{url}/v1/pipelines/{pipeline_id}")
        except OSError:
            continue
        if status == 200 and isinstance(doc, dict):
            return doc
    return None


Perform = Callable[[Action], Awaitable[None]]


async def run_chaos(
    platform: Platform,
    receiver: AlertReceiver,
    plan: list[Action],
    perform: Perform,
    *,
    seed: int,
    workload: str,
    timeout: float = 900,
) -> Outcome:
    """Start the platform and carry out ``plan`` (``perform`` does each action) while pipelines
    run, one after another (``{workload}-1``, ``-2``...): the first is submitted before the first
    action, the next as soon as one ends while actions remain. Then wait for the last one's end
    and for the platform to settle, stop it and ``receiver``, and check every invariant on every
    pipeline."""
    platform.start()
    try:
        await platform.wait_ready()
        outcome = Outcome(seed)
        started = time.monotonic()
        deadline = started + timeout
        plan_done = asyncio.Event()

        async def next_pipeline() -> str:
            pipeline_id = f"{workload}-{len(outcome.pipeline_ids) + 1}"
            outcome.pipeline_ids.append(pipeline_id)
            await submit(platform, pipeline(pipeline_id))
            return pipeline_id

        async def workload_runs() -> None:
            pipeline_id = await next_pipeline()
            while time.monotonic() < deadline:
                died = await asyncio.to_thread(platform.supervise)
                if died:
                    raise AssertionError("a service died by itself:\n" + "\n".join(died))
                status = await pipeline_status(platform, pipeline_id)
                if status is not None and status["status"] in TERMINAL:
                    outcome.statuses[pipeline_id] = status["status"]
                    if plan_done.is_set() or status["status"] != "succeeded":
                        return  # a failed pipeline ends the run: its invariants will say why
                    pipeline_id = await next_pipeline()
                    continue
                await asyncio.sleep(1.0)
            raise AssertionError(f"pipeline {pipeline_id} did not end within {timeout:.0f} s")

        async def chaos() -> None:
            try:
                for action in plan:
                    await asyncio.sleep(action.after_s)
                    await perform(action)
                    outcome.performed.append(action)
            finally:
                plan_done.set()

        acting = asyncio.create_task(chaos())
        following = asyncio.create_task(workload_runs())
        try:
            # The workload ends once the plan is carried out (or a pipeline fails); an action that
            # could not be carried out is raised here.
            await following
            if acting.done():
                acting.result()
        finally:
            acting.cancel()
            following.cancel()
        outcome.seconds = time.monotonic() - started
        outcome.start_failures = platform.start_failures()
        await settle(platform, receiver, outcome)
        return outcome
    finally:
        platform.stop()
        await receiver.stop()


async def settle(platform: Platform, receiver: AlertReceiver, outcome: Outcome) -> None:
    """Wait until the platform has caught up with the run (the metrics stored, every action
    answered, every anomaly alerted), stop it, then check the invariants on each pipeline."""
    settings, pipeline_ids = platform.settings, outcome.pipeline_ids
    pool = await asyncpg.create_pool(platform.database_url, min_size=1, max_size=2)
    try:
        events: list[Any] = []
        log: list[tuple[int, Any]] = []

        async def read_events() -> None:
            nonlocal events, log
            log = await invariants.read_topic(settings, Topic.PIPELINE_EVENTS)
            events = [e for _, e in log]

        def ours(data: Any) -> bool:
            return getattr(data, "pipeline_id", None) in pipeline_ids

        def unanswered() -> list[str]:
            return [p for pid in pipeline_ids for p in invariants.actions_answered(events, pid)]

        async def metrics_problems() -> list[str]:
            emitted = [
                e.data
                for _, e in await invariants.read_topic(settings, Topic.METRICS)
                if getattr(e.data, "job_id", "").startswith(tuple(f"{p}." for p in pipeline_ids))
            ]
            jobs = {m.job_id for m in emitted}
            stored = {job: await get_job_points(job, run="all", db=pool) for job in jobs}
            return invariants.metrics_exactly_once(emitted, stored, jobs)

        died: list[str] = []

        async def caught_up() -> bool:
            died.extend(await asyncio.to_thread(platform.supervise))
            await read_events()
            if unanswered():
                return False
            if await metrics_problems():
                return False
            return await alerts_done()

        async def alerts_done() -> bool:
            anomalies = {
                e.data.anomaly_id
                for _, e in await invariants.read_topic(settings, Topic.ANOMALIES)
                if ours(e.data)
            }
            sent = {
                e.data.anomaly_id
                for _, e in await invariants.read_topic(settings, Topic.ALERTS)
                if e.type in ("AlertSent", "AlertFailed")
            }
            return anomalies <= sent

        try:
            await wait_until(caught_up, timeout=90, interval=1.0, what="the platform to catch up")
        except AssertionError:
            pass  # what is still missing is reported as violations below
        finally:
            platform.stop()
        await read_events()
        witness = read_witness(platform.witness_dir)
        outcome.violations = [f"died by itself: {d}" for d in died]
        for pid in pipeline_ids:
            outcome.violations += [
                *invariants.pipeline_succeeded(events, pid),
                *invariants.events_unique_and_ordered(log, pid),
                *invariants.no_attempt_ran_twice(
                    [w for w in witness if w["pipeline_id"] == pid],
                    [e for e in events if getattr(e.data, "pipeline_id", "") == pid],
                ),
            ]
        outcome.violations += [
            *await metrics_problems(),
            *invariants.alerts_once(receiver.deliveries),
            *unanswered(),
        ]
        outcome.failures = [
            f"{e.data.pipeline_id} {e.data.stage}#{e.data.attempt} "
            f"{getattr(e.data, 'kind', '')}: {str(getattr(e.data, 'error', ''))[:160]}"
            for e in events
            if e.type == "StageFailed" and ours(e.data)
        ]
        outcome.alerts = sum(receiver.deliveries.values())
        outcome.actions = sum(1 for e in events if e.type == "ActionRequested" and ours(e.data))
    finally:
        await pool.close()


# --- the two plans ----------------------------------------------------------------------------

RESILIENCE_SERVICES = (
    "orchestrator-0",
    "agent-0",
    "agent-1",
    "ingest-0",
    "diagnostics-0",
    "gateway-0",
)
SCALED_SERVICES = ("orchestrator", "ingest", "diagnostics", "gateway")
SCALED_AGENTS = 3


def resilience_plan(seed: int) -> list[Action]:
    """Every service killed once and the broker and database restarted once, in a seeded
    order at seeded moments, then a few more kills of services drawn at random."""
    rng = random.Random(seed)
    targets = [*RESILIENCE_SERVICES, "kafka", "postgres"]
    rng.shuffle(targets)
    targets += [rng.choice(RESILIENCE_SERVICES) for _ in range(4)]
    return [
        Action(
            "restart" if t in ("kafka", "postgres") else "kill",
            t,
            after_s=rng.uniform(2.0, 6.0),
            back_after_s=rng.uniform(0.0, 2.0),
        )
        for t in targets
    ]


def scale_out_plan(seed: int) -> list[Action]:
    """One instance of each service retired, one agent killed and restarted, in a seeded
    order at seeded moments."""
    rng = random.Random(seed)
    actions = [
        Action("retire", f"{service}-{rng.randrange(2)}", after_s=0.0)
        for service in SCALED_SERVICES
    ]
    actions.append(Action("kill", f"agent-{rng.randrange(SCALED_AGENTS)}", 0.0, rng.uniform(0, 2)))
    rng.shuffle(actions)
    for action in actions:
        action.after_s = rng.uniform(3.0, 8.0)
    return actions


async def resilience(stack: PrivateStack, root: Path, seed: int) -> tuple[Outcome, list[Action]]:
    """The resilience run on ``stack`` (a private broker and server: it restarts them), in a
    fresh namespace of its own, with its files under ``root``."""
    settings = replace(
        KafkaSettings(bootstrap_servers=stack.bootstrap, client_id="posttrain-chaos"),
        namespace=f"chaos-{uuid.uuid4().hex[:6]}",
    )
    await ensure_topics(settings)
    await await_coordinators(settings)
    receiver = await AlertReceiver().start()
    platform = Platform(
        settings, stack.database_url, root, diagnostics_config=diagnostics_config(receiver.url)
    )

    async def perform(action: Action) -> None:
        if action.kind == "restart":
            await asyncio.to_thread(stack.restart, action.target)
            return
        platform.kill(action.target)
        await asyncio.sleep(action.back_after_s)
        platform.restart(action.target)

    plan = resilience_plan(seed)
    outcome = await run_chaos(
        platform, receiver, plan, perform, seed=seed, workload=f"chaos-{seed}"
    )
    return outcome, plan


async def scale_out(
    settings: KafkaSettings, database_url: str, root: Path, seed: int
) -> tuple[Outcome, list[Action]]:
    """The scale-out run on ``settings``' namespace and ``database_url`` (the shared stack
    will do: nothing here stops the broker or the server)."""
    receiver = await AlertReceiver().start()
    platform = Platform(
        settings,
        database_url,
        root,
        orchestrators=2,
        ingests=2,
        diagnostics=2,
        gateways=2,
        agents=SCALED_AGENTS,
        diagnostics_config=diagnostics_config(receiver.url),
    )

    async def perform(action: Action) -> None:
        if action.kind == "retire":
            platform.retire(action.target)
            return
        platform.kill(action.target)
        await asyncio.sleep(action.back_after_s)
        platform.restart(action.target)

    plan = scale_out_plan(seed)
    workload = f"{settings.namespace}-scale-{seed}"
    return await run_chaos(platform, receiver, plan, perform, seed=seed, workload=workload), plan
