"""``decide(state, message, context) -> Decision``: what the orchestrator does about a message.

The decided events are applied to ``state`` as they are decided (so each step sees the last), and
returned with the agent commands to send. Ids and times come from the message: the same message
on the same state always gives the same decision. The shell writes the events, the commands and
the consumed offsets in one Kafka transaction.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain, islice
from typing import Any

from posttrain.events import Envelope, Message
from posttrain.events.actions import command_for, refusal_reason, stage_actions
from posttrain.events.messages import (
    ActionApplied,
    ActionRefused,
    ActionRequested,
    AdjustLearningRate,
    CancelPipeline,
    CancelStage,
    CheckpointSaved,
    CommandRefused,
    PipelineCancelled,
    PipelineFailed,
    PipelineRejected,
    PipelineResumed,
    PipelineSubmitted,
    PipelineSucceeded,
    RequestAction,
    ResumePipeline,
    ResumeStage,
    RetryStage,
    RollbackStage,
    RunStage,
    StageCached,
    StageCancelled,
    StageControl,
    StageDispatched,
    StageFailed,
    StageLost,
    StagePaused,
    StageRejected,
    StageRetryScheduled,
    StageStarted,
    StageSucceeded,
    StageWaiting,
    SubmitPipeline,
    TickClock,
)
from posttrain.events.topics import Topic
from posttrain.orchestrator.core import dag, ids
from posttrain.orchestrator.core.state import (
    ACTIVE,
    ActionOutcome,
    Attempt,
    PipelineState,
    PipelineStatus,
    StageState,
    StageStatus,
    apply,
)

# A stage lost with its agent this many times fails: something about it kills agents.
MAX_LOSSES = 3


@dataclass(frozen=True, slots=True)
class AgentView:
    """An agent as the shell sees it now (from the compacted heartbeat topic), less what has
    been sent to it that its last heartbeat does not show yet.

    ``free_slots`` None: the agent announces no limit on the stages it runs at once.
    ``beat_at``: when the agent sent that heartbeat, on the agent's own clock (the clock its
    rejections are stamped with too)."""

    agent_id: str
    gpus: int
    free_gpus: int
    labels: frozenset[str] = frozenset()
    alive: bool = True
    free_slots: int | None = None
    beat_at: float = 0.0
    # A stable number of the agent's (the shell gives crc32 of its id): among agents equally
    # free, each stage prefers its own order of them, so that stages (and instances placing
    # at once) spread over the fleet instead of all choosing the same agent.
    ring: int = 0
    # Whether the agent is in this instance's share of the fleet. Instances do not see each
    # other's dispatches until heartbeats show them, so each places only on its own share
    # where that has an agent that could take the stage, and races for the others only
    # where it has none (a label only they have).
    home: bool = True


@dataclass(frozen=True, slots=True)
class CacheEntry:
    outputs: Mapping[str, Any]
    command_id: str


@dataclass(frozen=True, slots=True)
class Context:
    """What the shell knows beyond the pipeline's own log. Decisions based on it are recorded on
    the log, so replay never needs it."""

    agents: Mapping[str, AgentView] = field(default_factory=dict)
    cache: Mapping[str, CacheEntry] = field(default_factory=dict)


@dataclass(slots=True)
class Decision:
    events: list[Envelope[Any]] = field(default_factory=list)
    commands: list[tuple[Topic, Envelope[Any]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.events or self.commands)


class _Builder:
    """Stamps decided messages with ids and times derived from the cause, and applies events."""

    def __init__(self, state: PipelineState, cause: Envelope[Any], now: float) -> None:
        self.state = state
        self.cause = cause
        self.now = now
        self.when = (
            datetime.fromtimestamp(now, UTC)
            if isinstance(cause.data, TickClock)
            else cause.occurred_at
        )
        self.decision = Decision()
        self._n = 0
        self.free: dict[str, int] = {}  # GPUs left after this decision's dispatches, per agent
        self.taken_slots: dict[str, int] = {}  # stages this decision sent, per agent

    def _envelope(self, data: Message, key: str) -> Envelope[Any]:
        self._n += 1
        return Envelope(
            id=ids.event_id(self.cause.id, self._n),
            occurred_at=self.when,
            key=key,
            data=data,
            correlation_id=self.state.correlation_id or self.cause.correlation_id or self.cause.id,
            causation_id=self.cause.id,
        )

    def event(self, data: Message) -> None:
        envelope = self._envelope(data, self.state.pipeline_id)
        apply(self.state, envelope)
        self.decision.events.append(envelope)

    def command(self, data: Message, agent_id: str) -> None:
        self.decision.commands.append((Topic.AGENT_COMMANDS, self._envelope(data, agent_id)))


def decide(state: PipelineState, message: Envelope[Any], context: Context) -> Decision:
    """Decide and apply. ``state`` is a fresh ``PipelineState(pipeline_id)`` for an unknown id."""
    data = message.data
    now = data.now if isinstance(data, TickClock) else message.occurred_at.timestamp()
    b = _Builder(state, message, max(now, state.now))
    handler = _HANDLERS.get(type(data))
    if handler is None:
        return b.decision
    submitted = bool(state.stages) or state.status == PipelineStatus.REJECTED
    if not submitted and not isinstance(data, SubmitPipeline):
        # A command for a pipeline never submitted is refused on the record; anything else
        # (a report about a pipeline we never accepted) has nothing to act on.
        if isinstance(data, RequestAction):
            _refuse_action(b, data, f"no pipeline {data.pipeline_id!r}: it was never submitted")
        elif isinstance(data, ResumePipeline | RetryStage | CancelPipeline):
            _refuse(b, data, f"no pipeline {data.pipeline_id!r}: it was never submitted")
        return b.decision
    handler(b, data, context)
    return b.decision


def _refuse(b: _Builder, c: ResumePipeline | RetryStage | CancelPipeline, reason: str) -> None:
    """Record that a pipeline command changed nothing, and why."""
    b.event(
        CommandRefused(
            pipeline_id=b.state.pipeline_id,
            command=c.TYPE,
            command_id=b.cause.id,
            reason=reason,
            stage=c.stage if isinstance(c, RetryStage) else None,
            requested_by=c.requested_by,
        )
    )


# --- commands -------------------------------------------------------------------------------


def _submit(b: _Builder, c: SubmitPipeline, ctx: Context) -> None:
    if b.state.stages or b.state.status == PipelineStatus.REJECTED:
        return  # a duplicate submission: the first one stands
    specs, errors = dag.validate(c.stages)
    if errors:
        b.event(PipelineRejected(pipeline_id=c.pipeline_id, errors=[e.as_dict() for e in errors]))
        return
    b.event(
        PipelineSubmitted(
            pipeline_id=c.pipeline_id,
            name=c.name,
            stages=specs,
            layers=dag.execution_layers(specs),
            submitted_by=c.submitted_by,
            settings=c.settings,
        )
    )
    _progress(b, ctx)


def _resume(b: _Builder, c: ResumePipeline, ctx: Context) -> None:
    if b.state.status in (PipelineStatus.SUCCEEDED, PipelineStatus.REJECTED):
        _refuse(b, c, f"the pipeline {b.state.status.value}: there is nothing to resume")
        return
    to_run = [
        s.name
        for s in _ordered(b.state)
        if s.status in (StageStatus.FAILED, StageStatus.CANCELLED, StageStatus.LOST)
        or (s.status == StageStatus.PENDING and b.state.status != PipelineStatus.RUNNING)
    ]
    if not to_run:
        _refuse(b, c, "no stage failed, was cancelled or lost: there is nothing to resume")
        return
    b.event(PipelineResumed(pipeline_id=b.state.pipeline_id, stages_to_run=to_run))
    _progress(b, ctx)


def _retry_stage(b: _Builder, c: RetryStage, ctx: Context) -> None:
    stage = b.state.stages.get(c.stage)
    if stage is None:
        _refuse(b, c, f"the pipeline has no stage {c.stage!r}")
        return
    if stage.status not in (StageStatus.FAILED, StageStatus.CANCELLED, StageStatus.LOST):
        _refuse(
            b,
            c,
            f"stage {c.stage!r} is {stage.status.value}: only a failed, cancelled or lost "
            "stage is retried",
        )
        return
    blocked = [
        name
        for name in dag.descendants([s.spec for s in b.state.stages.values()], c.stage)
        if b.state.stages[name].status in (StageStatus.CANCELLED, StageStatus.FAILED)
    ]
    b.event(PipelineResumed(pipeline_id=b.state.pipeline_id, stages_to_run=[c.stage, *blocked]))
    _progress(b, ctx)


def _cancel(b: _Builder, c: CancelPipeline, ctx: Context) -> None:
    if b.state.status != PipelineStatus.RUNNING:
        _refuse(b, c, f"the pipeline {b.state.status.value}: there is nothing to cancel")
        return
    for stage in _ordered(b.state):
        if stage.status in ACTIVE:
            run = stage.current
            assert run is not None
            b.command(
                _control(CancelStage, b, stage, f"cancel:{b.cause.id}", c.reason), run.agent_id
            )
        elif stage.status not in (StageStatus.PENDING, StageStatus.WAITING, StageStatus.RETRY_WAIT):
            continue
        b.event(
            StageCancelled(
                pipeline_id=b.state.pipeline_id,
                stage=stage.name,
                attempt=stage.attempt,
                reason=c.reason,
            )
        )
    b.event(PipelineCancelled(pipeline_id=b.state.pipeline_id, reason=c.reason))


def _refuse_action(b: _Builder, c: RequestAction, reason: str) -> None:
    if c.action_id in b.state.actions:
        return  # decided before: a redelivered request
    b.event(
        ActionRefused(
            action_id=c.action_id,
            pipeline_id=c.pipeline_id,
            stage=c.stage,
            attempt=c.attempt,
            action=c.action,
            reason=reason,
            anomaly_id=c.anomaly_id,
            step=c.step,
            dry_run=c.dry_run,
        )
    )


def _request_action(b: _Builder, c: RequestAction, ctx: Context) -> None:
    """Send the command for the action, or refuse it on the record: no request is dropped. A
    request whose id was decided before (requested or refused) changes nothing."""
    if c.action_id in b.state.actions:
        return
    refusal = _refusal(b.state, c)
    if refusal is not None:
        _refuse_action(b, c, refusal)
        return
    stage = b.state.stages[c.stage]
    run = stage.current
    assert run is not None
    b.event(
        ActionRequested(
            action_id=c.action_id,
            pipeline_id=c.pipeline_id,
            stage=c.stage,
            attempt=c.attempt,
            action=c.action,
            factor=c.factor,
            reason=c.reason,
            anomaly_id=c.anomaly_id,
            agent_id=run.agent_id,
            dry_run=c.dry_run,
            step=c.step,
            rollback_steps=c.rollback_steps,
            skip_batches=c.skip_batches,
            checkpoint=c.checkpoint,
        )
    )
    if c.dry_run:
        return  # decided and recorded; nothing is sent
    cls = command_for(c.action)
    assert cls is not None  # _refusal refuses an action no command carries
    b.command(
        _control(cls, b, stage, c.action_id, c.reason, **_command_fields(cls, c)), run.agent_id
    )


def _refusal(state: PipelineState, c: RequestAction) -> str | None:
    """Why the action cannot be applied to the stage as it is now, or None when it can. Each
    reason names the stage and what was expected, for the user who reads the history."""
    stage = state.stages.get(c.stage)
    if stage is None:
        return f"pipeline {state.pipeline_id!r} has no stage {c.stage!r}"
    if command_for(c.action) is None:
        return f"no agent command carries the action {c.action!r}"
    if c.action not in stage_actions(stage.spec.task, stage.spec.params):
        return refusal_reason(stage.spec.task, stage.spec.params, c.action)
    if stage.attempt != c.attempt:
        return f"stage {c.stage!r} is at attempt {stage.attempt}, not {c.attempt}"
    if stage.status not in ACTIVE:
        return f"stage {c.stage!r} is {stage.status.value}, not running"
    paused = stage.status == StageStatus.PAUSED
    if c.action == "resume" and not paused:
        return f"stage {c.stage!r} is {stage.status.value}, not paused: nothing to resume"
    if c.action == "pause" and paused:
        return f"stage {c.stage!r} is already paused"
    if c.action == "adjust_learning_rate" and not (c.factor is not None and c.factor > 0):
        return f"adjust_learning_rate needs a positive factor, got {c.factor!r}"
    if c.action == "rollback" and c.skip_batches is not None and c.skip_batches < 0:
        return f"rollback cannot skip a negative number of batches ({c.skip_batches})"
    return None


def _command_fields(cls: type[StageControl], c: RequestAction) -> dict[str, Any]:
    """What the command carries beyond the stage's identity and the reason."""
    if cls is AdjustLearningRate:
        return {"factor": c.factor}
    if cls is RollbackStage:
        return {"step": c.step, "rollback_steps": c.rollback_steps, "skip_batches": c.skip_batches}
    if cls is ResumeStage:
        return {"checkpoint": c.checkpoint}
    return {}


def _tick(b: _Builder, t: TickClock, ctx: Context) -> None:
    if b.state.status != PipelineStatus.RUNNING:
        return
    before = len(b.decision.events)
    silent = set(t.silent_agents)
    for stage in _ordered(b.state):
        run = stage.current
        if stage.status in ACTIVE and run is not None:
            if run.agent_id in silent:
                b.event(
                    StageLost(
                        **_running_ids(b, stage, run),
                        reason=f"agent {run.agent_id} stopped sending heartbeats",
                    )
                )
            elif stage.spec.timeout_s is not None:
                started = run.started_at if run.started_at is not None else run.dispatched_at
                if b.now - started > stage.spec.timeout_s:
                    b.command(
                        _control(CancelStage, b, stage, f"timeout:{run.command_id}", "timed out"),
                        run.agent_id,
                    )
                    b.event(
                        StageFailed(
                            **_running_ids(b, stage, run),
                            job_id=run.job_id,
                            finished_at=b.now,
                            kind="timeout",
                            error=f"timed out after {stage.spec.timeout_s:g} s",
                        )
                    )
                    _after_failure(b, stage)
    _progress(b, ctx)
    if len(b.decision.events) > before:
        # Record the tick itself first so that the log shows what time the decisions saw.
        tick_event = b._envelope(t, b.state.pipeline_id)
        b.decision.events.insert(before, tick_event)
        # Applied after the events it caused, which is the same here: a tick only raises
        # ``now`` (a max) and counts as one event, so the live state equals the replayed one.
        apply(b.state, tick_event)


# --- reports from agents --------------------------------------------------------------------


def _current(b: _Builder, r: Any) -> StageState | None:
    stage = b.state.stages.get(r.stage)
    if stage is None or stage.attempt != r.attempt:
        return None
    run = stage.current
    if run is None or run.command_id != r.command_id:
        return None
    return stage


def _started(b: _Builder, r: StageStarted, ctx: Context) -> None:
    stage = _current(b, r)
    if stage is not None and stage.status == StageStatus.ASSIGNED:
        b.event(r)


def _succeeded(b: _Builder, r: StageSucceeded, ctx: Context) -> None:
    stage = _current(b, r)
    if stage is not None and stage.status in ACTIVE:
        b.event(r)
        _progress(b, ctx)


def _failed(b: _Builder, r: StageFailed, ctx: Context) -> None:
    stage = _current(b, r)
    if stage is None or stage.status not in ACTIVE:
        return
    b.event(r)
    if r.kind != "cancelled":
        _after_failure(b, stage)
    _progress(b, ctx)


def _rejected(b: _Builder, r: StageRejected, ctx: Context) -> None:
    stage = _current(b, r)
    if stage is not None and stage.status == StageStatus.ASSIGNED:
        b.event(r)
        _progress(b, ctx)


def _record_if_current(b: _Builder, r: Any, ctx: Context) -> None:
    stage = _current(b, r)
    if stage is not None and stage.status in ACTIVE:
        b.event(r)


def _refused_by_agent(b: _Builder, r: ActionRefused, ctx: Context) -> None:
    """An agent could not apply a control: recorded once per action id, whatever the stage's
    state now (the refusal answers a command the orchestrator sent)."""
    stage = b.state.stages.get(r.stage)
    if stage is None or r.attempt not in stage.attempts:
        return
    if b.state.actions.get(r.action_id) == ActionOutcome.REFUSED:
        return  # a redelivered report
    b.event(r)


# --- scheduling -----------------------------------------------------------------------------


def _after_failure(b: _Builder, stage: StageState) -> None:
    policy = stage.spec.retries
    if stage.failures < policy.max_attempts:
        delay = min(
            policy.backoff_s * policy.backoff_multiplier ** (stage.failures - 1),
            policy.max_backoff_s,
        )
        b.event(
            StageRetryScheduled(
                pipeline_id=b.state.pipeline_id,
                stage=stage.name,
                next_attempt=stage.attempt + 1,
                not_before=b.now + delay,
            )
        )


def _ordered(state: PipelineState) -> list[StageState]:
    return [state.stages[name] for layer in state.layers for name in layer]


def _progress(b: _Builder, ctx: Context) -> None:
    """Dispatch every stage whose dependencies have succeeded, then settle the pipeline."""
    state = b.state
    if state.status != PipelineStatus.RUNNING:
        return
    for stage in _ordered(state):
        ready_status = (
            stage.status in (StageStatus.PENDING, StageStatus.WAITING)
            or (
                stage.status == StageStatus.RETRY_WAIT
                and stage.not_before is not None
                and stage.not_before <= b.now
            )
            or (stage.status == StageStatus.LOST and stage.losses < MAX_LOSSES)
        )
        if ready_status and all(
            state.stages[d].status == StageStatus.SUCCEEDED for d in stage.spec.depends_on
        ):
            _dispatch(b, stage, ctx)
    _settle(b)


def _dispatch(b: _Builder, stage: StageState, ctx: Context) -> None:
    state = b.state
    run = stage.current
    # A rejected attempt is placed again under the same attempt number (it never ran).
    attempt = (
        stage.attempt
        if run is not None and run.status == StageStatus.PENDING
        else stage.attempt + 1
    )
    # The identity of this attempt: every message about it carries these fields.
    attempt_ids: dict[str, Any] = {
        "pipeline_id": state.pipeline_id,
        "stage": stage.name,
        "attempt": attempt,
        "command_id": ids.command_id(state.pipeline_id, stage.name, attempt),
        "job_id": ids.job_id(state.pipeline_id, stage.name, stage.spec.params),
    }
    try:
        params = dag.resolve_references(stage.spec.params, state.stage_outputs())
    except KeyError as exc:
        unplaced = {**attempt_ids, "agent_id": "orchestrator"}
        b.event(StageDispatched(**unplaced, task=stage.spec.task, params={}))
        b.event(
            StageFailed(
                **unplaced, finished_at=b.now, kind="error", error=f"unresolved reference: {exc}"
            )
        )
        return  # no retry: running again cannot produce a missing upstream output
    if stage.spec.cache:
        upstream = {d: state.stages[d].outputs for d in stage.spec.depends_on}
        key = ids.cache_key(stage.spec.task, params, upstream)
        hit = ctx.cache.get(key) or _local_cache(state).get(key)
        if hit is not None:
            b.event(
                StageCached(
                    pipeline_id=state.pipeline_id,
                    stage=stage.name,
                    cache_key=key,
                    outputs=dict(hit.outputs),
                    from_command_id=hit.command_id,
                )
            )
            return
    agent = _place(b, stage, ctx)
    if agent is None:
        return
    b.free[agent.agent_id] = b.free.get(agent.agent_id, agent.free_gpus) - stage.spec.resources.gpus
    b.taken_slots[agent.agent_id] = b.taken_slots.get(agent.agent_id, 0) + 1
    placed = {**attempt_ids, "agent_id": agent.agent_id}
    b.event(StageDispatched(**placed, task=stage.spec.task, params=params))
    b.command(
        RunStage(
            **placed,
            task=stage.spec.task,
            params=params,
            resume_from=stage.last_checkpoint if attempt > 1 else None,
            timeout_s=stage.spec.timeout_s,
            resources=stage.spec.resources,
        ),
        agent.agent_id,
    )


# How many fitting agents placement compares before it stops looking: the best of a few in
# the stage's own order spreads stages as well as the best of all, without a pass over a
# thousand agents for every dispatch.
PLACEMENT_SAMPLE = 16

# How far an agent got towards taking a stage (for the reason a stage waits).
_ALIVE, _LABELLED, _GPUS, _SLOT, _FITS = 1, 2, 3, 4, 5


def _place(b: _Builder, stage: StageState, ctx: Context) -> AgentView | None:
    """A live agent with the labels, the free GPUs and a free slot the stage needs (the most
    free GPUs first, then the most free slots), in this instance's share of the agents where
    any there could take it; or None after recording why the stage waits.

    Agents are looked at in the stage's own order (from a place in the list that its name
    picks) and the best of the first ``PLACEMENT_SAMPLE`` that fit is chosen: stages spread
    over equal agents, two instances rarely pick the same one, and most free slots first keeps
    them (each seeing only its own reservations until a heartbeat shows the other's) from
    filling one agent past its slots."""
    need = stage.spec.resources
    labels = frozenset(need.labels)
    spread = zlib.crc32(f"{b.state.pipeline_id}/{stage.name}".encode())
    agents = ctx.agents.values()
    first = spread % len(agents) if agents else 0
    found: dict[bool, list[tuple[tuple[int, int, int, str], AgentView]]] = {True: [], False: []}
    reached = {True: 0, False: 0}  # by share: how far the best agent got
    home_could = False  # an agent of our share could take the stage once it has room
    # From ``first`` round to it, without copying a thousand agents for each dispatch: the
    # loop usually stops after a few dozen.
    for a in chain(islice(agents, first, None), islice(agents, first)):
        got = 0
        if a.alive:
            got = _ALIVE
            if not labels or labels <= a.labels:
                got = _LABELLED
                home_could = home_could or (a.home and a.gpus >= need.gpus)
                free = b.free.get(a.agent_id, a.free_gpus)
                if free >= need.gpus:
                    got = _GPUS
                    slots = _free_slots(b, a)
                    if slots > 0:
                        got = _SLOT
                        if not _still_excluded(stage, a):
                            got = _FITS
                            found[a.home].append(((free, slots, a.ring ^ spread, a.agent_id), a))
        if got > reached[a.home]:
            reached[a.home] = got
        if len(found[True]) >= PLACEMENT_SAMPLE:
            break
    if home_could:
        candidates, got = found[True], reached[True]
    else:
        candidates, got = found[True] + found[False], max(reached.values())
    if candidates:
        return max(candidates, key=lambda c: c[0])[1]
    if got == _SLOT:
        # Each agent that rejected this attempt is tried again once a heartbeat it sent after
        # the rejection shows room: never re-sent on every tick while it stays full.
        reason = "rejected by every agent that fits: " + ", ".join(sorted(stage.excluded_agents))
    elif got == 0:
        reason = "no agent is alive"
    elif got == _GPUS:
        reason = "every live agent that fits runs as many stages as it has slots"
    else:
        reason = f"no live agent has {need.gpus} free GPU(s)" + (
            f" and labels {sorted(labels)}" if labels else ""
        )
    if stage.status != StageStatus.WAITING or stage.waiting_reason != reason:
        b.event(StageWaiting(pipeline_id=b.state.pipeline_id, stage=stage.name, reason=reason))
    return None


# What an agent that announces no slot limit counts as (more than any that does).
_UNLIMITED_SLOTS = 1 << 30


def _free_slots(b: _Builder, agent: AgentView) -> int:
    """The agent's free stage slots once this decision's dispatches are counted."""
    if agent.free_slots is None:
        return _UNLIMITED_SLOTS
    return agent.free_slots - b.taken_slots.get(agent.agent_id, 0)


def _still_excluded(stage: StageState, agent: AgentView) -> bool:
    """Whether the agent rejected this attempt, or was lost with it, and has not sent a
    heartbeat since."""
    if agent.agent_id not in stage.excluded_agents:
        return False
    run = stage.current
    excluded_at = run.excluded_at if run is not None else None
    return excluded_at is None or agent.beat_at <= excluded_at


def _local_cache(state: PipelineState) -> dict[str, CacheEntry]:
    return {e.key: e.entry for e in cache_entries(state)}


@dataclass(frozen=True, slots=True)
class KeyedCacheEntry:
    key: str
    entry: CacheEntry


def cache_entries(state: PipelineState) -> list[KeyedCacheEntry]:
    """The cache entries this pipeline's successful ``cache: true`` stages provide."""
    out = []
    for stage in state.stages.values():
        run = stage.current
        if (
            stage.cacheable
            and stage.status == StageStatus.SUCCEEDED
            and run is not None
            and stage.cached_from is None
        ):
            upstream = {d: state.stages[d].outputs for d in stage.spec.depends_on}
            key = ids.cache_key(stage.spec.task, run.params, upstream)
            out.append(KeyedCacheEntry(key, CacheEntry(dict(stage.outputs), run.command_id)))
    return out


def _settle(b: _Builder) -> None:
    state = b.state
    statuses = [s.status for s in state.stages.values()]
    if all(s == StageStatus.SUCCEEDED for s in statuses):
        b.event(PipelineSucceeded(pipeline_id=state.pipeline_id))
        return
    in_flight = any(
        s in ACTIVE or s in (StageStatus.RETRY_WAIT, StageStatus.WAITING) for s in statuses
    ) or any(s.status == StageStatus.LOST and s.losses < MAX_LOSSES for s in state.stages.values())
    if not in_flight:
        failed = [
            s.name
            for s in _ordered(state)
            if s.status in (StageStatus.FAILED, StageStatus.LOST, StageStatus.CANCELLED)
        ]
        b.event(PipelineFailed(pipeline_id=state.pipeline_id, failed_stages=failed))


def _control(
    cls: type[Any], b: _Builder, stage: StageState, action_id: str, reason: str, **extra: Any
) -> Any:
    run = stage.current
    assert run is not None
    ids_ = _running_ids(b, stage, run)
    return cls(
        action_id=action_id,
        run_command_id=ids_.pop("command_id"),  # control commands name the run they act on
        **ids_,
        reason=reason,
        **extra,
    )


def _running_ids(b: _Builder, stage: StageState, run: Attempt) -> dict[str, Any]:
    """The identity of a stage's current attempt, as the messages about it carry it."""
    return {
        "pipeline_id": b.state.pipeline_id,
        "stage": stage.name,
        "attempt": stage.attempt,
        "command_id": run.command_id,
        "agent_id": run.agent_id,
    }


_HANDLERS: dict[type[Message], Any] = {
    SubmitPipeline: _submit,
    ResumePipeline: _resume,
    RetryStage: _retry_stage,
    CancelPipeline: _cancel,
    RequestAction: _request_action,
    TickClock: _tick,
    StageStarted: _started,
    StageSucceeded: _succeeded,
    StageFailed: _failed,
    StageRejected: _rejected,
    StagePaused: _record_if_current,
    CheckpointSaved: _record_if_current,
    ActionApplied: _record_if_current,
    ActionRefused: _refused_by_agent,
}


def tick_due(state: PipelineState, now: float, silent_agents: frozenset[str]) -> bool:
    """Whether a tick at ``now`` could decide anything for this pipeline (so the shell ticks
    only pipelines that wait on time or on agents)."""
    if state.status != PipelineStatus.RUNNING:
        return False
    for stage in state.stages.values():
        run = stage.current
        if stage.status in ACTIVE and run is not None:
            if run.agent_id in silent_agents:
                return True
            if stage.spec.timeout_s is not None:
                started = run.started_at if run.started_at is not None else run.dispatched_at
                if now - started > stage.spec.timeout_s:
                    return True
        elif stage.status == StageStatus.RETRY_WAIT:
            if stage.not_before is not None and stage.not_before <= now:
                return True
        elif stage.status == StageStatus.WAITING:
            return True
    return False
