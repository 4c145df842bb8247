"""The reports a stage process asks the agent to relay (its events file), as messages.

A line is a message as the codec writes it (``stage_files.append_message``); a bare
``{"type": ..., fields}`` line, as stage processes wrote before, is still read."""

from __future__ import annotations

from typing import Any

from posttrain.events.messages import ActionApplied, ActionRefused, CheckpointSaved, Message
from posttrain.trainer_agent.core.lines import is_message, line_fields, line_message
from posttrain.trainer_agent.core.outcomes import entry_fields
from posttrain.trainer_agent.core.state import Entry


def checkpoint_path(event: dict[str, Any]) -> str | None:
    """The path a line of the events file reports saved (a CheckpointSaved, in either form)."""
    fields = line_fields(event)
    if fields is None or fields.get("type") != "CheckpointSaved" or not fields.get("path"):
        return None
    return str(fields["path"])


def event_message(entry: Entry, event: dict[str, Any], agent_id: str) -> Message | None:
    """The report for one line of the stage's events file; None for a line of another type."""
    fields = entry_fields(entry, agent_id)
    if is_message(event):
        message = line_message(event)  # None: a report no reader can make sense of
        if not isinstance(message, CheckpointSaved | ActionApplied | ActionRefused):
            return None
        # The agent's journal is the authority on where its stage runs.
        return message.model_copy(update=fields)
    if event.get("type") == "CheckpointSaved":
        return CheckpointSaved(
            **fields,
            step=int(event["step"]),
            path=str(event["path"]),
            reason=str(event.get("reason", "scheduled")),
            non_finite=list(event.get("non_finite") or []),
        )
    if event.get("type") == "ActionRefused":
        step = event.get("step")
        return ActionRefused(
            action_id=str(event["action_id"]),
            pipeline_id=fields["pipeline_id"],
            stage=fields["stage"],
            attempt=fields["attempt"],
            action=event["action"],
            reason=str(event.get("reason", "")),
            step=int(step) if step is not None else None,
            agent_id=fields["agent_id"],
            command_id=fields["command_id"],
            job_id=fields["job_id"],
        )
    if event.get("type") == "ActionApplied":
        return ActionApplied(
            **fields,
            action_id=str(event["action_id"]),
            action=event["action"],
            step=int(event["step"]),
            details=dict(event.get("details") or {}),
        )
    return None
