"""Pipeline commands (to the orchestrator) and the events of the pipeline event log."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from posttrain.events.messages.base import Message

JsonDict = dict[str, Any]


class RetryPolicy(BaseModel):
    """How often a stage is attempted and how long to wait between attempts."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    max_attempts: int = 1
    backoff_s: float = 5.0
    backoff_multiplier: float = 2.0
    max_backoff_s: float = 600.0


class Resources(BaseModel):
    """What a stage needs from the agent that runs it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    gpus: int = 0
    labels: list[str] = Field(default_factory=list)


class StageSpec(BaseModel):
    """One stage as the user wrote it (SEED.md: name, task, params, depends_on).

    The shape only: the orchestrator's DAG validator checks what the values mean.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    task: str
    params: JsonDict = Field(default_factory=dict)
    depends_on: list[str] = Field(default_factory=list)
    retries: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout_s: float | None = None
    resources: Resources = Field(default_factory=Resources)
    cache: bool = False


ActionKind = Literal[
    "pause", "resume", "adjust_learning_rate", "force_checkpoint", "rollback", "cancel"
]

# --- commands (posttrain.pipeline.commands, key pipeline_id) ---------------------------------


class SubmitPipeline(Message):
    TYPE = "SubmitPipeline"

    pipeline_id: str
    name: str
    stages: list[StageSpec]
    submitted_by: str | None = None
    settings: JsonDict = Field(default_factory=dict)


class ResumePipeline(Message):
    TYPE = "ResumePipeline"

    pipeline_id: str
    requested_by: str | None = None


class CancelPipeline(Message):
    TYPE = "CancelPipeline"

    pipeline_id: str
    reason: str = ""
    requested_by: str | None = None


class RetryStage(Message):
    TYPE = "RetryStage"

    pipeline_id: str
    stage: str
    requested_by: str | None = None


class RequestAction(Message):
    """Ask the orchestrator to act on a running stage (from diagnostics or a user).

    Every request ends on the pipeline's log: ActionRequested (sent to the agent, or with
    ``dry_run`` only decided) or ActionRefused with the reason. ``dry_run``: decide and record,
    send nothing."""

    TYPE = "RequestAction"

    action_id: str
    pipeline_id: str
    stage: str
    attempt: int
    action: ActionKind
    factor: float | None = None
    reason: str = ""
    anomaly_id: str | None = None
    dry_run: bool = False
    # The training step the request is about (the anomaly's step), and for ``rollback``: how many
    # steps to go back and how many data batches to skip afterwards (PaLM's remedy for a spike).
    step: int | None = None
    rollback_steps: int | None = None
    skip_batches: int | None = None
    # ``resume``: the checkpoint to go on from (else the stage's last one with finite weights).
    checkpoint: str | None = None


class TickClock(Message):
    """The orchestrator's shell records the passage of time so that replay decides identically.

    ``silent_agents`` are the agents the shell had not heard from for too long at ``now``."""

    TYPE = "TickClock"

    pipeline_id: str
    now: float
    silent_agents: list[str] = Field(default_factory=list)


# --- events (posttrain.pipeline.events, key pipeline_id; the orchestrator's log) -------------


class PipelineSubmitted(Message):
    TYPE = "PipelineSubmitted"

    pipeline_id: str
    name: str
    stages: list[StageSpec]
    layers: list[list[str]]
    submitted_by: str | None = None
    settings: JsonDict = Field(default_factory=dict)


class PipelineRejected(Message):
    TYPE = "PipelineRejected"

    pipeline_id: str
    errors: list[JsonDict]


class PipelineResumed(Message):
    TYPE = "PipelineResumed"

    pipeline_id: str
    stages_to_run: list[str]


class PipelineSucceeded(Message):
    TYPE = "PipelineSucceeded"

    pipeline_id: str


class PipelineFailed(Message):
    TYPE = "PipelineFailed"

    pipeline_id: str
    failed_stages: list[str]


class PipelineCancelled(Message):
    TYPE = "PipelineCancelled"

    pipeline_id: str
    reason: str = ""


class StageDispatched(Message):
    """A RunStage was sent: which attempt, under which deterministic command id, to which agent."""

    TYPE = "StageDispatched"

    pipeline_id: str
    stage: str
    attempt: int
    command_id: str
    agent_id: str
    job_id: str
    task: str
    params: JsonDict


class StageWaiting(Message):
    TYPE = "StageWaiting"

    pipeline_id: str
    stage: str
    reason: str


class StageRetryScheduled(Message):
    TYPE = "StageRetryScheduled"

    pipeline_id: str
    stage: str
    next_attempt: int
    not_before: float


class StageLost(Message):
    TYPE = "StageLost"

    pipeline_id: str
    stage: str
    attempt: int
    command_id: str
    agent_id: str
    reason: str


class StageCancelled(Message):
    TYPE = "StageCancelled"

    pipeline_id: str
    stage: str
    attempt: int
    reason: str = ""


class StageCached(Message):
    """A ``cache: true`` stage reused an earlier success with the same inputs."""

    TYPE = "StageCached"

    pipeline_id: str
    stage: str
    cache_key: str
    outputs: JsonDict
    from_command_id: str


class StageOutputsCached(Message):
    """A ``cache: true`` stage succeeded: its outputs under the key of its inputs, for any later
    stage with the same inputs, whichever orchestrator instance owns that stage's pipeline
    (the compacted ``posttrain.stage.cache`` topic, which every instance reads in full)."""

    TYPE = "StageOutputsCached"

    cache_key: str
    pipeline_id: str
    command_id: str  # the run that produced the outputs
    outputs: JsonDict


class CommandRefused(Message):
    """A pipeline command that changed nothing, and why: a resume, retry or cancel of a
    pipeline never submitted, a pipeline already finished, a stage that did not fail. The
    orchestrator writes it so that no command is dropped without a trace (``RequestAction``
    has its own answer, ``ActionRefused``)."""

    TYPE = "CommandRefused"

    pipeline_id: str
    command: str  # the command's type: ResumePipeline, RetryStage or CancelPipeline
    command_id: str  # the command envelope's id
    reason: str
    stage: str | None = None
    requested_by: str | None = None


class ActionRequested(Message):
    """The orchestrator accepted a RequestAction and sent the matching agent command (with
    ``dry_run``: it would have sent it, and sent nothing). The agent answers with ActionApplied
    or ActionRefused under the same ``action_id``."""

    TYPE = "ActionRequested"

    action_id: str
    pipeline_id: str
    stage: str
    attempt: int
    action: ActionKind
    factor: float | None = None
    reason: str = ""
    anomaly_id: str | None = None
    agent_id: str | None = None
    dry_run: bool = False
    step: int | None = None
    rollback_steps: int | None = None
    skip_batches: int | None = None
    checkpoint: str | None = None


class ActionRefused(Message):
    """A requested action that was not carried out, and why.

    Written by the orchestrator for a RequestAction it cannot apply (an unknown stage, a stage
    not running or on another attempt, a stage kind that cannot take the action, a missing
    factor, ...), and reported by an agent for a control its stage cannot apply (a command
    stage asked to pause, a rollback with no checkpoint before the step, ...): ``agent_id``,
    ``command_id`` and ``job_id`` are set then. ``step`` is the training step it is about."""

    TYPE = "ActionRefused"

    action_id: str
    pipeline_id: str
    stage: str
    attempt: int
    action: ActionKind
    reason: str
    anomaly_id: str | None = None
    step: int | None = None
    dry_run: bool = False
    agent_id: str | None = None
    command_id: str | None = None
    job_id: str | None = None
