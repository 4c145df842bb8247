"""Commands to trainer agents (posttrain.agent.commands) and their heartbeats (posttrain.agents).

Both topics are keyed by agent_id.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from posttrain.events.messages.base import Message
from posttrain.events.messages.pipeline import Resources

JsonDict = dict[str, Any]


class RunStage(Message):
    """Run one attempt of a stage. ``command_id`` is deterministic (pipeline, stage, attempt):
    an agent that sees the same id twice reports the first outcome instead of training again."""

    TYPE = "RunStage"

    command_id: str
    agent_id: str
    pipeline_id: str
    stage: str
    attempt: int
    job_id: str
    task: str
    params: JsonDict
    resume_from: str | None = None
    timeout_s: float | None = None
    # What the stage needs (the spec's ``resources``): the agent, the authority on its own
    # capacity, rejects a stage it has not the free GPUs or the labels for.
    resources: Resources = Field(default_factory=Resources)


class StageControl(Message):
    """A control command for a running stage, applied at the next step boundary.

    ``action_id`` is the id of the RequestAction it carries out (or an id of the orchestrator's
    own, for a cancel it decided); the agent reports ActionApplied or ActionRefused under it."""

    action_id: str
    agent_id: str
    run_command_id: str
    pipeline_id: str
    stage: str
    attempt: int
    reason: str = ""


class CancelStage(StageControl):
    TYPE = "CancelStage"


class PauseStage(StageControl):
    TYPE = "PauseStage"


class ResumeStage(StageControl):
    """Go on with a paused stage: from ``checkpoint`` when one is named, else from the last
    checkpoint of the stage whose weights are finite (never a poisoned one)."""

    TYPE = "ResumeStage"

    checkpoint: str | None = None


class AdjustLearningRate(StageControl):
    TYPE = "AdjustLearningRate"

    factor: float


class ForceCheckpoint(StageControl):
    TYPE = "ForceCheckpoint"


class RollbackStage(StageControl):
    """Go back to the last checkpoint with finite weights saved before ``step`` (one at least
    ``rollback_steps`` before it where there is one; ``step`` None: before the step the stage is
    at), restoring model, optimizer, scheduler and RNG state, skip ``skip_batches`` batches of
    data, and go on. A stage with no such checkpoint refuses it (ActionRefused)."""

    TYPE = "RollbackStage"

    step: int | None = None
    rollback_steps: int | None = None
    skip_batches: int | None = None


class AgentHeartbeat(Message):
    """Liveness and capacity of one agent; the compacted topic keeps the latest per agent.

    v2 replaced v1's comma-separated ``labels`` string by a list and added ``free_gpus``.
    ``slots`` (added within v2, optional: older agents leave it out) is how many stages the agent
    runs at once; ``running`` lists the ones that hold a slot now, so its free slots are
    ``slots - len(running)``. None: the agent announces no slot limit.
    """

    TYPE = "AgentHeartbeat"
    VERSION = 2

    agent_id: str
    host: str
    gpus: int
    free_gpus: int
    labels: list[str] = Field(default_factory=list)
    running: list[str] = Field(default_factory=list)
    slots: int | None = None
    interval_s: float = 5.0
    sent_at: float
    stopping: bool = False
