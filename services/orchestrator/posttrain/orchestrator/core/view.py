"""The status of a pipeline as users see it (``get_pipeline_status``, the read model)."""

from __future__ import annotations

from typing import Any

from posttrain.orchestrator.core.state import PipelineState


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
        "stages": [
            {
                "name": stage.name,
                "task": stage.spec.task,
                "depends_on": list(stage.spec.depends_on),
                "status": stage.status.value,
                "attempt": stage.attempt,
                "command_id": stage.current.command_id if stage.current else None,
                "agent_id": stage.current.agent_id if stage.current else None,
                "job_id": stage.current.job_id if stage.current else None,
                "started_at": stage.current.started_at if stage.current else None,
                "finished_at": stage.current.finished_at if stage.current else None,
                "outputs": stage.outputs,
                "error": stage.current.error if stage.current else None,
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
            for stage in state.stages.values()
        ],
    }
