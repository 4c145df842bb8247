"""Outcome mapping: how a stage ended (the result its launch wrote, or how its process died)
as the report the orchestrator gets, and the report fields that route it.

An outcome is kept in the journal as ``{"type": "StageSucceeded" | "StageFailed", "data":
{...}}`` (the message's JSON), so that a replay reports exactly what was reported first.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, get_args

from posttrain.events.failures import FailureKind, kind_from_text
from posttrain.events.messages import (
    MESSAGE_TYPES,
    Message,
    StageFailed,
    StageSucceeded,
)
from posttrain.trainer_agent.core.events import JsonDict
from posttrain.trainer_agent.core.failure import exit_details
from posttrain.trainer_agent.core.state import Entry

LOG_NAME = "stage.log"  # stage_files.LOG: the log every launch of an attempt appends to
_KINDS: frozenset[str] = frozenset(get_args(FailureKind))


def from_result(entry: Entry, result: Mapping[str, Any], now: float, agent_id: str) -> JsonDict:
    """A launch's final result (not a pause): succeeded with its outputs (and its log), or
    failed of its own kind, unless the agent timed it out (then ``timeout``)."""
    if result.get("status") == "succeeded":
        outputs = dict(result.get("outputs") or {})
        outputs.setdefault("log_path", str(PurePath(entry.attempt_dir) / LOG_NAME))
        message = StageSucceeded(
            **entry_fields(entry, agent_id),
            finished_at=float(result.get("finished_at") or now),
            outputs=outputs,
        )
        return {"type": StageSucceeded.TYPE, "data": message.model_dump(mode="json")}
    stop = entry.stop
    kind = "timeout" if stop is not None and stop.reason == "timeout" else result.get("kind")
    return failed(
        entry,
        failure_kind(kind),
        str(result.get("error", "")),
        now,
        dict(result.get("details") or {}),
    )


def died(entry: Entry, now: float, log_tail: str, exit_code: int | None) -> JsonDict:
    """A process that ended without writing a result: stopped by the agent (the stop's reason),
    else out of memory when its log says so, else an error; the log's end and the exit status
    (signal) go in the details."""
    if entry.stop is not None:
        reason = entry.stop.reason
        return failed(entry, reason, f"stage process stopped by the agent ({reason})", now)
    return failed(
        entry,
        kind_from_text(log_tail),
        "stage process died without reporting an outcome (killed, or crashed)",
        now,
        {"log_tail": log_tail, **exit_details(exit_code)},
    )


def failure_kind(kind: Any) -> FailureKind:
    """A kind a stage process wrote, as one of the platform's (an unknown one is an error)."""
    return kind if isinstance(kind, str) and kind in _KINDS else "error"  # type: ignore[return-value]


def failed(
    entry: Entry, kind: FailureKind, error: str, now: float, details: JsonDict | None = None
) -> JsonDict:
    message = StageFailed(
        **entry_fields(entry, str(entry.run.get("agent_id", ""))),
        finished_at=now,
        kind=kind,
        error=error,
        details=details or {},
    )
    return {"type": StageFailed.TYPE, "data": message.model_dump(mode="json")}


def outcome_message(outcome: Mapping[str, Any], *, replayed: bool) -> Message:
    """The report a journal outcome stands for (``replayed``: answered again from the journal)."""
    cls = MESSAGE_TYPES[outcome["type"]]
    data = dict(outcome["data"])
    if replayed and cls is StageSucceeded:
        data["replayed"] = True
    return cls.model_validate(data)


def entry_fields(entry: Entry, agent_id: str) -> dict[str, Any]:
    """The routing fields of a report about ``entry``."""
    run = entry.run
    return {
        "pipeline_id": run["pipeline_id"],
        "stage": run["stage"],
        "attempt": run["attempt"],
        "command_id": entry.command_id,
        "agent_id": agent_id,
        "job_id": run["job_id"],
    }
