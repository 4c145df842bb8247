"""``PipelineState = fold(events)``: one mutator per event type, nothing else changes state.

State is mutable for speed (replay folds a million events), but only ``apply`` mutates it and
``apply`` reads nothing but the event: replaying the same log always gives the same state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from posttrain.events import Envelope, Message
from posttrain.events.messages import (
    ActionApplied,
    ActionRefused,
    ActionRequested,
    CheckpointSaved,
    CommandRefused,
    PipelineCancelled,
    PipelineFailed,
    PipelineRejected,
    PipelineResumed,
    PipelineSubmitted,
    PipelineSucceeded,
    StageCached,
    StageCancelled,
    StageDispatched,
    StageFailed,
    StageLost,
    StagePaused,
    StageRejected,
    StageRetryScheduled,
    StageSpec,
    StageStarted,
    StageSucceeded,
    StageWaiting,
    TickClock,
)
from posttrain.events.views import EnvelopeView, as_model, view_type


class StageStatus(StrEnum):
    PENDING = "pending"  # never dispatched, or reset by a resume
    WAITING = "waiting"  # ready, but no agent fits (see waiting_reason)
    RETRY_WAIT = "retry_wait"  # failed, next attempt after not_before
    ASSIGNED = "assigned"  # RunStage sent
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"


ACTIVE = frozenset({StageStatus.ASSIGNED, StageStatus.RUNNING, StageStatus.PAUSED})
DONE_OK = frozenset({StageStatus.SUCCEEDED})
RERUNNABLE = frozenset(
    {
        StageStatus.FAILED,
        StageStatus.CANCELLED,
        StageStatus.LOST,
        StageStatus.PENDING,
        StageStatus.WAITING,
        StageStatus.RETRY_WAIT,
    }
)


class ActionOutcome(StrEnum):
    """Where a requested action stands, by its action id."""

    REQUESTED = "requested"  # the command was sent to the agent
    DRY_RUN = "dry_run"  # decided and recorded, nothing sent
    APPLIED = "applied"
    REFUSED = "refused"


class PipelineStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


@dataclass(slots=True)
class Attempt:
    """One attempt of a stage: the original design's "task id in the DB", and more."""

    attempt: int
    command_id: str
    agent_id: str
    job_id: str
    params: dict[str, Any]
    dispatched_at: float
    status: StageStatus = StageStatus.ASSIGNED
    started_at: float | None = None
    finished_at: float | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    failure_kind: str | None = None
    rejected_by: list[str] = field(default_factory=list)
    # When an agent was last excluded from this stage by this attempt (it rejected it, or was
    # lost with it): an excluded agent is tried again only after a heartbeat it sent later.
    excluded_at: float | None = None


@dataclass(slots=True, eq=False)
class StageState:
    # The stage as submitted: its StageSpec, or (read by replay) the spec's view, with the same
    # fields. Validating every spec of every pipeline made up a tenth of a replay; the model is
    # made the first time ``spec`` is read, which after a restart is for running pipelines only.
    definition: Any
    status: StageStatus = StageStatus.PENDING
    attempt: int = 0  # the current (or last) attempt number; 0 before the first dispatch
    failures: int = 0  # attempts that failed for the stage's own reasons (counted by retries)
    losses: int = 0  # attempts lost with their agent (not the stage's fault)
    attempts: dict[int, Attempt] = field(default_factory=dict)
    not_before: float | None = None
    waiting_reason: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    cached_from: str | None = None
    last_checkpoint: str | None = None
    excluded_agents: set[str] = field(default_factory=set)

    @property
    def spec(self) -> StageSpec:
        if not isinstance(self.definition, StageSpec):
            self.definition = as_model(StageSpec, self.definition)
        return self.definition

    @property
    def name(self) -> str:
        return str(self.definition.name)

    @property
    def cacheable(self) -> bool:
        """Whether the stage is marked ``cache: true`` (without making its model)."""
        return bool(self.definition.cache)

    @property
    def current(self) -> Attempt | None:
        return self.attempts.get(self.attempt)

    def __eq__(self, other: object) -> bool:
        # A stage read as a view equals the same stage read as a model.
        if not isinstance(other, StageState):
            return NotImplemented
        return self.spec == other.spec and all(
            getattr(self, f) == getattr(other, f) for f in _STAGE_FIELDS
        )


_STAGE_FIELDS = tuple(f.name for f in fields(StageState) if f.name != "definition")


@dataclass(slots=True)
class PipelineState:
    pipeline_id: str
    name: str = ""
    status: PipelineStatus = PipelineStatus.RUNNING
    stages: dict[str, StageState] = field(default_factory=dict)
    layers: list[list[str]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    submitted_by: str | None = None
    correlation_id: str | None = None
    submitted_at: float | None = None
    finished_at: float | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    now: float = 0.0  # the latest time seen on the log (event times and recorded ticks)
    # Every action id decided (requested, refused) or reported (applied, refused), and where it
    # stands: a request whose id is here is a duplicate.
    actions: dict[str, ActionOutcome] = field(default_factory=dict)
    version: int = 0  # events applied

    def stage_outputs(self) -> dict[str, dict[str, Any]]:
        return {n: s.outputs for n, s in self.stages.items() if s.status in DONE_OK}


Mutator = Callable[[PipelineState, Any, float], None]
_MUTATORS: dict[type[Any], Mutator] = {}  # message types and their views


def _on(cls: type[Message]) -> Callable[[Mutator], Mutator]:
    def register(fn: Mutator) -> Mutator:
        _MUTATORS[cls] = fn
        # Replay reads most events as views (same fields, no pydantic validation): same mutator.
        view = view_type(cls)
        if view is not None:
            _MUTATORS[view] = fn
        return fn

    return register


@_on(PipelineSubmitted)
def _submitted(s: PipelineState, e: PipelineSubmitted, t: float) -> None:
    s.name = e.name
    s.stages = {spec.name: StageState(definition=spec) for spec in e.stages}
    s.layers = [list(layer) for layer in e.layers]
    s.settings = dict(e.settings)
    s.submitted_by = e.submitted_by
    s.submitted_at = t
    s.status = PipelineStatus.RUNNING


@_on(PipelineRejected)
def _rejected(s: PipelineState, e: PipelineRejected, t: float) -> None:
    s.status = PipelineStatus.REJECTED
    s.errors = list(e.errors)
    s.finished_at = t


@_on(PipelineResumed)
def _resumed(s: PipelineState, e: PipelineResumed, t: float) -> None:
    s.status = PipelineStatus.RUNNING
    s.finished_at = None
    for name in e.stages_to_run:
        stage = s.stages[name]
        stage.status = StageStatus.PENDING
        stage.failures = 0
        stage.losses = 0
        stage.not_before = None
        stage.waiting_reason = None
        stage.excluded_agents.clear()


@_on(PipelineSucceeded)
def _p_succeeded(s: PipelineState, e: PipelineSucceeded, t: float) -> None:
    s.status = PipelineStatus.SUCCEEDED
    s.finished_at = t


@_on(PipelineFailed)
def _p_failed(s: PipelineState, e: PipelineFailed, t: float) -> None:
    s.status = PipelineStatus.FAILED
    s.finished_at = t


@_on(PipelineCancelled)
def _p_cancelled(s: PipelineState, e: PipelineCancelled, t: float) -> None:
    s.status = PipelineStatus.CANCELLED
    s.finished_at = t


@_on(StageDispatched)
def _dispatched(s: PipelineState, e: StageDispatched, t: float) -> None:
    stage = s.stages[e.stage]
    previous = stage.attempts.get(e.attempt)
    if previous is None:
        stage.excluded_agents.clear()  # a new attempt may go anywhere
    stage.attempt = e.attempt
    stage.attempts[e.attempt] = Attempt(
        attempt=e.attempt,
        command_id=e.command_id,
        agent_id=e.agent_id,
        job_id=e.job_id,
        params=dict(e.params),
        dispatched_at=t,
        rejected_by=list(previous.rejected_by) if previous else [],
        excluded_at=previous.excluded_at if previous else None,
    )
    stage.status = StageStatus.ASSIGNED
    stage.waiting_reason = None
    stage.not_before = None


@_on(StageWaiting)
def _waiting(s: PipelineState, e: StageWaiting, t: float) -> None:
    stage = s.stages[e.stage]
    stage.status = StageStatus.WAITING
    stage.waiting_reason = e.reason


@_on(StageRetryScheduled)
def _retry(s: PipelineState, e: StageRetryScheduled, t: float) -> None:
    stage = s.stages[e.stage]
    stage.status = StageStatus.RETRY_WAIT
    stage.not_before = e.not_before


@_on(StageStarted)
def _started(s: PipelineState, e: StageStarted, t: float) -> None:
    stage = s.stages[e.stage]
    run = stage.attempts[e.attempt]
    run.status = StageStatus.RUNNING
    run.started_at = e.started_at
    stage.status = StageStatus.RUNNING


@_on(StageSucceeded)
def _succeeded(s: PipelineState, e: StageSucceeded, t: float) -> None:
    stage = s.stages[e.stage]
    run = stage.attempts[e.attempt]
    run.status = StageStatus.SUCCEEDED
    run.finished_at = e.finished_at
    run.outputs = dict(e.outputs)
    stage.outputs = dict(e.outputs)
    stage.status = StageStatus.SUCCEEDED
    if "checkpoint" in e.outputs:
        stage.last_checkpoint = str(e.outputs["checkpoint"])


@_on(StageFailed)
def _failed(s: PipelineState, e: StageFailed, t: float) -> None:
    stage = s.stages[e.stage]
    run = stage.attempts[e.attempt]
    run.status = StageStatus.CANCELLED if e.kind == "cancelled" else StageStatus.FAILED
    run.finished_at = e.finished_at
    run.error = e.error
    run.failure_kind = e.kind
    stage.status = run.status
    if e.kind != "cancelled":
        stage.failures += 1


@_on(StageRejected)
def _stage_rejected(s: PipelineState, e: StageRejected, t: float) -> None:
    stage = s.stages[e.stage]
    run = stage.attempts[e.attempt]
    run.rejected_by.append(e.agent_id)
    run.excluded_at = t
    run.status = StageStatus.PENDING  # never ran: placed again under the same attempt number
    stage.excluded_agents.add(e.agent_id)
    stage.status = StageStatus.PENDING


@_on(StageLost)
def _lost(s: PipelineState, e: StageLost, t: float) -> None:
    stage = s.stages[e.stage]
    run = stage.attempts[e.attempt]
    run.status = StageStatus.LOST
    run.error = e.reason
    run.finished_at = t
    run.excluded_at = t
    stage.status = StageStatus.LOST
    stage.losses += 1
    stage.excluded_agents.add(e.agent_id)


@_on(StageCancelled)
def _cancelled(s: PipelineState, e: StageCancelled, t: float) -> None:
    stage = s.stages[e.stage]
    run = stage.attempts.get(e.attempt)
    if run is not None and run.status in ACTIVE:
        run.status = StageStatus.CANCELLED
        run.finished_at = t
    stage.status = StageStatus.CANCELLED


@_on(StageCached)
def _cached(s: PipelineState, e: StageCached, t: float) -> None:
    stage = s.stages[e.stage]
    stage.status = StageStatus.SUCCEEDED
    stage.outputs = dict(e.outputs)
    stage.cached_from = e.from_command_id


@_on(StagePaused)
def _paused(s: PipelineState, e: StagePaused, t: float) -> None:
    stage = s.stages[e.stage]
    stage.status = StageStatus.PAUSED
    stage.attempts[e.attempt].status = StageStatus.PAUSED
    # A retry goes on from the last checkpoint whose weights are finite, never a poisoned one.
    if e.resume_checkpoint:
        stage.last_checkpoint = e.resume_checkpoint
    elif e.checkpoint and "weights" not in e.non_finite:
        stage.last_checkpoint = e.checkpoint


@_on(CheckpointSaved)
def _checkpoint(s: PipelineState, e: CheckpointSaved, t: float) -> None:
    if "weights" not in e.non_finite:
        s.stages[e.stage].last_checkpoint = e.path


@_on(ActionRequested)
def _action_requested(s: PipelineState, e: ActionRequested, t: float) -> None:
    s.actions[e.action_id] = ActionOutcome.DRY_RUN if e.dry_run else ActionOutcome.REQUESTED


@_on(ActionRefused)
def _action_refused(s: PipelineState, e: ActionRefused, t: float) -> None:
    s.actions[e.action_id] = ActionOutcome.REFUSED


@_on(CommandRefused)
def _command_refused(s: PipelineState, e: CommandRefused, t: float) -> None:
    pass  # on the record only: a refused command changed nothing


@_on(ActionApplied)
def _action_applied(s: PipelineState, e: ActionApplied, t: float) -> None:
    stage = s.stages[e.stage]
    s.actions[e.action_id] = ActionOutcome.APPLIED
    if e.action == "resume" and stage.status == StageStatus.PAUSED:
        stage.status = StageStatus.RUNNING
        stage.attempts[e.attempt].status = StageStatus.RUNNING
    elif e.action == "rollback" and e.details.get("checkpoint"):
        # The run went back to this checkpoint: those saved after it belong to the abandoned
        # branch, so a retry goes on from here.
        stage.last_checkpoint = str(e.details["checkpoint"])


@_on(TickClock)
def _tick(s: PipelineState, e: TickClock, t: float) -> None:
    s.now = max(s.now, e.now)


def apply(state: PipelineState, envelope: Envelope[Any] | EnvelopeView) -> None:
    """Apply one event of this pipeline's log to its state."""
    data = envelope.data
    mutator = _MUTATORS.get(type(data))
    if mutator is None:
        raise TypeError(f"{envelope.type} is not a pipeline event")
    t = envelope.occurred_at.timestamp()
    if t > state.now:
        state.now = t
    if state.correlation_id is None:
        state.correlation_id = envelope.correlation_id or envelope.id
    mutator(state, data, t)
    state.version += 1


def fold(
    events: Iterable[Envelope[Any] | EnvelopeView],
    into: dict[str, PipelineState] | None = None,
) -> dict[str, PipelineState]:
    """Every pipeline's state from its events, in log order (added to ``into`` if given)."""
    states: dict[str, PipelineState] = {} if into is None else into
    for envelope in events:
        pid = envelope.data.pipeline_id  # every pipeline event carries it
        state = states.get(pid)
        if state is None:
            state = states[pid] = PipelineState(pipeline_id=pid)
        apply(state, envelope)
    return states


PIPELINE_EVENT_TYPES = frozenset(cls.TYPE for cls in _MUTATORS)  # views carry TYPE too
