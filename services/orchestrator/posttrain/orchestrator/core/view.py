"""The status of a pipeline as users see it (``get_pipeline_status``, the read model), and one
line per event for its history."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from posttrain.events import Message
from posttrain.orchestrator.core.state import PipelineState, StageState


def pipeline_view(state: PipelineState) -> dict[str, Any]:
    """A JSON-able picture of the pipeline: status, layers, and per stage its attempts."""
    return {
        "pipeline_id": state.pipeline_id,
        "name": state.name,
        "status": state.status.value,
        "layers": state.layers,
        "submitted_by": state.submitted_by,
        "submitted_at": state.submitted_at,
        "finished_at": state.finished_at,
        "errors": state.errors,
        "stages": [stage_view(stage) for stage in state.stages.values()],
    }


def stage_view(stage: StageState) -> dict[str, Any]:
    """One stage of ``pipeline_view``: its status, current attempt and every attempt."""
    current = stage.current
    return {
        "name": stage.name,
        # The definition, not ``spec``: a view read by replay stays one (making its model for
        # every stage of every pipeline was most of a projection's catch-up).
        "task": stage.definition.task,
        "depends_on": list(stage.definition.depends_on),
        "status": stage.status.value,
        "attempt": stage.attempt,
        "command_id": current.command_id if current else None,
        "agent_id": current.agent_id if current else None,
        "job_id": current.job_id if current else None,
        "started_at": current.started_at if current else None,
        "finished_at": current.finished_at if current else None,
        "outputs": stage.outputs,
        "error": current.error if current else None,
        "waiting_reason": stage.waiting_reason,
        "not_before": stage.not_before,
        "cached_from": stage.cached_from,
        "last_checkpoint": stage.last_checkpoint,
        "attempts": [
            {
                "attempt": run.attempt,
                "command_id": run.command_id,
                "agent_id": run.agent_id,
                "status": run.status.value,
                "dispatched_at": run.dispatched_at,
                "started_at": run.started_at,
                "finished_at": run.finished_at,
                "error": run.error,
                "failure_kind": run.failure_kind,
                "outputs": run.outputs,
            }
            for run in stage.attempts.values()
        ],
    }


# --- history: one line per event ------------------------------------------------------------

# Bookkeeping on the log that no person needs to read: left out of a pipeline's history.
HIDDEN_FROM_HISTORY = frozenset({"TickClock"})
_MAX_LINE = 300


def _one_line(text: str) -> str:
    """The last non-empty line of ``text`` (a traceback's last says what went wrong), cut."""
    text = str(text)
    if len(text) <= _MAX_LINE and text.isprintable():  # one line (every line break is not)
        return text.strip()
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= _MAX_LINE else line[: _MAX_LINE - 1] + "…"


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _reason(reason: str | None) -> str:
    return f": {_one_line(reason)}" if reason else ""


def _run(e: Any) -> str:
    return f"{e.stage} attempt {e.attempt}"


def _action(e: Any) -> str:
    factor = f" (x{e.factor:g})" if getattr(e, "factor", None) is not None else ""
    return f"{e.action}{factor}"


_SUMMARIES: dict[str, Callable[[Any], str]] = {
    "PipelineSubmitted": lambda e: (
        f"submitted {e.name!r}: {len(e.stages)} stage{'s' * (len(e.stages) != 1)} "
        f"in {len(e.layers)} layer{'s' * (len(e.layers) != 1)}"
        + (f" by {e.submitted_by}" if e.submitted_by else "")
    ),
    "PipelineRejected": lambda e: (
        f"rejected with {len(e.errors)} problem{'s' * (len(e.errors) != 1)}"
        + (_reason(e.errors[0].get("message")) if e.errors else "")
    ),
    "PipelineResumed": lambda e: f"resumed: {', '.join(e.stages_to_run) or 'nothing'} to run",
    "PipelineSucceeded": lambda e: "pipeline succeeded",
    "PipelineFailed": lambda e: f"pipeline failed ({', '.join(e.failed_stages)} failed)",
    "PipelineCancelled": lambda e: "pipeline cancelled" + _reason(e.reason),
    "StageDispatched": lambda e: f"{_run(e)} sent to {e.agent_id} (job {e.job_id})",
    "StageWaiting": lambda e: f"{e.stage} waiting" + _reason(e.reason),
    "StageRetryScheduled": lambda e: (
        f"{e.stage} will retry as attempt {e.next_attempt} from {_utc(e.not_before)}"
    ),
    "StageLost": lambda e: f"{_run(e)} lost on {e.agent_id}" + _reason(e.reason),
    "StageCancelled": lambda e: f"{_run(e)} cancelled" + _reason(e.reason),
    "StageCached": lambda e: f"{e.stage} reused the outputs of {e.from_command_id}",
    "StageStarted": lambda e: f"{_run(e)} started on {e.agent_id}",
    "StageSucceeded": lambda e: (
        f"{_run(e)} succeeded" + (" (the agent's record of an earlier run)" if e.replayed else "")
    ),
    "StageFailed": lambda e: f"{_run(e)} failed ({e.kind})" + _reason(e.error),
    "StageRejected": lambda e: f"{_run(e)} refused by {e.agent_id}" + _reason(e.reason),
    "StagePaused": lambda e: (
        f"{_run(e)} paused at step {e.step}"
        + (f" (not finite: {', '.join(e.non_finite)})" if e.non_finite else "")
    ),
    "CheckpointSaved": lambda e: (
        f"{_run(e)} saved a checkpoint at step {e.step} ({e.reason})"
        + (f", not finite: {', '.join(e.non_finite)}" if e.non_finite else "")
    ),
    "ActionRequested": lambda e: (
        f"{_action(e)} {'decided (dry run)' if e.dry_run else 'requested'} for {_run(e)}"
        + (f" on anomaly {e.anomaly_id}" if e.anomaly_id else "")
        + (f" at step {e.step}" if e.step is not None else "")
        + _reason(e.reason)
    ),
    "ActionRefused": lambda e: f"{_action(e)} for {_run(e)} refused" + _reason(e.reason),
    "ActionApplied": lambda e: f"{_action(e)} applied to {_run(e)} at step {e.step}",
    "TickClock": lambda e: "clock tick",
    "CommandRefused": lambda e: (
        f"{e.command}{' of ' + e.stage if e.stage else ''} refused" + _reason(e.reason)
    ),
}


def event_summary(event: Message) -> str:
    """One line for people saying what a pipeline event means (its history's ``summary``)."""
    describe = _SUMMARIES.get(event.TYPE)
    if describe is None:
        return event.TYPE
    return _one_line(describe(event)) or event.TYPE


def event_stage(event: Message) -> tuple[str | None, int | None]:
    """The stage and attempt an event is about (None where it is about the whole pipeline)."""
    stage = getattr(event, "stage", None)
    attempt = getattr(event, "attempt", None)
    if attempt is None:
        attempt = getattr(event, "next_attempt", None)
    return (
        stage if isinstance(stage, str) else None,
        attempt if isinstance(attempt, int) else None,
    )
