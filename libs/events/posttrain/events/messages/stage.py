"""What agents report about the stages they run (posttrain.stage.reports, key pipeline_id).

The orchestrator records the reports it accepts on the pipeline event log with the same types.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from posttrain.events.messages.agent import RunStage
from posttrain.events.messages.base import Message
from posttrain.events.messages.pipeline import ActionKind

JsonDict = dict[str, Any]

FailureKind = Literal["error", "oom", "cancelled", "lost", "timeout"]


class _StageReport(Message):
    pipeline_id: str
    stage: str
    attempt: int
    command_id: str
    agent_id: str
    job_id: str


def report_fields(run: RunStage, agent_id: str) -> JsonDict:
    """The routing fields of a report by ``agent_id`` about ``run`` (every stage report's)."""
    return {
        "pipeline_id": run.pipeline_id,
        "stage": run.stage,
        "attempt": run.attempt,
        "command_id": run.command_id,
        "agent_id": agent_id,
        "job_id": run.job_id,
    }


class StageStarted(_StageReport):
    TYPE = "StageStarted"

    started_at: float
    log_path: str | None = None


class StageSucceeded(_StageReport):
    TYPE = "StageSucceeded"

    finished_at: float
    outputs: JsonDict = Field(default_factory=dict)
    replayed: bool = False  # True when the agent's journal answered instead of running again


class StageFailed(_StageReport):
    """v2 added ``kind``; v1 payloads are upcast by reading the error text."""

    TYPE = "StageFailed"
    VERSION = 2

    finished_at: float
    kind: FailureKind
    error: str
    details: JsonDict = Field(default_factory=dict)


class StageRejected(_StageReport):
    """The agent cannot take the stage (no capacity, missing label): the orchestrator places it
    elsewhere."""

    TYPE = "StageRejected"

    reason: str


# What was not finite in a checkpoint: "weights" (a parameter holds NaN/Inf) or "loss" (the
# loss of the step it was saved at). A checkpoint with non-finite weights is poisoned: nothing
# resumes or rolls back to it unless a user names it.
NonFinite = Literal["weights", "loss"]


class StagePaused(_StageReport):
    """The stage stopped at ``step`` with ``checkpoint`` saved there; ``non_finite`` says what of
    that checkpoint is not finite. ``resume_checkpoint`` is where a resume goes on from: the last
    checkpoint whose weights are finite (None: there is none, a resume starts over)."""

    TYPE = "StagePaused"

    step: int
    checkpoint: str | None = None
    non_finite: list[NonFinite] = Field(default_factory=list)
    resume_checkpoint: str | None = None


class CheckpointSaved(_StageReport):
    TYPE = "CheckpointSaved"

    step: int
    path: str
    reason: str = "scheduled"
    non_finite: list[NonFinite] = Field(default_factory=list)


class ActionApplied(_StageReport):
    """An action carried out at ``step``. A rollback's ``details`` say where it went:
    ``from_step``, ``to_step``, ``checkpoint``, ``skip_batches``."""

    TYPE = "ActionApplied"

    action_id: str
    action: ActionKind
    step: int
    details: JsonDict = Field(default_factory=dict)
