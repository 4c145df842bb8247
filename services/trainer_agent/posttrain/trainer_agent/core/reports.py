"""The reports a stage process asks the agent to relay (its events file), as messages.

A line is a message as the codec writes it (``stage_files.append_message``); a bare
``{"type": ..., fields}`` line, as stage processes wrote before, is still read."""

from __future__ import annotations

from typing import Any

import orjson

from posttrain.events.codec import DecodeError, decode
from posttrain.events.messages import ActionApplied, ActionRefused, CheckpointSaved, Message
from posttrain.trainer_agent.core.outcomes import entry_fields
from posttrain.trainer_agent.core.state import Entry


def checkpoint_path(event: dict[str, Any]) -> str | None:
    """The path a line of the events file reports saved (a CheckpointSaved, in either form)."""
    data = event.get("data") if _is_message(event) else event
    if event.get("type") != "CheckpointSaved" or not isinstance(data, dict):
        return None
    return str(data["path"]) if data.get("path") else None


def _is_message(event: dict[str, Any]) -> bool:
    """A line as the codec writes a message (type, version, data), not a bare older line."""
    return isinstance(event.get("data"), dict) and "version" in event


def event_message(entry: Entry, event: dict[str, Any], agent_id: str) -> Message | None:
    """The report for one line of the stage's events file; None for a line of another type."""
    fields = entry_fields(entry, agent_id)
    if _is_message(event):
        try:
            message = decode(orjson.dumps(event)).data
        except DecodeError:
            return None  # a report no reader can make sense of is not relayed
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
