"""The agent's journal as a pure fold, and the decisions taken from it.

The journal is an append-only list of records on the agent's disk (``journal.py`` writes it).
Folding the records gives one ``Entry`` per RunStage command id; the decisions below say what a
RunStage or a control command does given that entry. This is what makes RunStage idempotent: a
command id that finished is answered from the journal, one that runs is left to run, whatever
restarts happened in between.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

from posttrain.events.messages import ActionKind

JsonDict = dict[str, Any]


class Status(StrEnum):
    RUNNING = "running"  # a stage process was launched and has not reported an outcome
    PAUSED = "paused"  # stopped at a checkpoint by PauseStage; ResumeStage relaunches it
    FINISHED = "finished"  # succeeded or failed: the outcome is final for this command id


@dataclass(frozen=True, slots=True)
class Launch:
    """One process of a stage (the first run, or a run resumed after a pause)."""

    number: int
    pid: int
    pid_start: int  # the process's start time (clock ticks), so a reused pid is not ours
    started_at: float
    resume_from: str | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    command_id: str
    run: JsonDict  # the RunStage payload as received
    status: Status
    attempt_dir: str
    gpu_ids: tuple[int, ...] = ()
    launches: tuple[Launch, ...] = ()
    # How many lines (and bytes) of the stage's events file are on Kafka already.
    events_published: int = 0
    events_offset: int = 0
    # Where the stage process starts reading its control file (after what it already applied).
    control_offset: int = 0
    paused_checkpoint: str | None = None  # the checkpoint saved at the pause
    paused_step: int | None = None
    # Where a resume goes on from: the last checkpoint whose weights are finite (the pause's
    # own, unless it is poisoned); None: there is none, a resume starts over.
    resume_checkpoint: str | None = None
    # The final report: {"type": "StageSucceeded" | "StageFailed", "data": {...}}.
    outcome: JsonDict | None = None
    outcome_reported: bool = False

    @property
    def launch(self) -> Launch | None:
        return self.launches[-1] if self.launches else None


def fold(
    records: Iterable[Mapping[str, Any]], initial: Mapping[str, Entry] | None = None
) -> dict[str, Entry]:
    """The journal's state: one entry per command id, from its records in order (after
    ``initial``, the state so far)."""
    entries: dict[str, Entry] = dict(initial or {})
    for record in records:
        kind = record.get("kind")
        command_id = record.get("command_id")
        if not isinstance(command_id, str):
            continue
        current = entries.get(command_id)
        if kind == "accepted":
            if current is None:
                entries[command_id] = Entry(
                    command_id=command_id,
                    run=dict(record["run"]),
                    status=Status.RUNNING,
                    attempt_dir=str(record["attempt_dir"]),
                    gpu_ids=tuple(record.get("gpu_ids", ())),
                )
            continue
        if current is None:
            continue  # a record of an entry we never accepted: ignore, never invent one
        entries[command_id] = _apply(current, kind, record)
    return entries


def _apply(entry: Entry, kind: Any, record: Mapping[str, Any]) -> Entry:
    if kind == "launched":
        launch = Launch(
            number=len(entry.launches) + 1,
            pid=int(record["pid"]),
            pid_start=int(record.get("pid_start", 0)),
            started_at=float(record.get("started_at", 0.0)),
            resume_from=record.get("resume_from"),
        )
        return replace(
            entry,
            status=Status.RUNNING,
            launches=(*entry.launches, launch),
            gpu_ids=tuple(record.get("gpu_ids", entry.gpu_ids)),
            control_offset=int(record.get("control_offset", entry.control_offset)),
        )
    if kind == "events_published":
        if int(record["count"]) <= entry.events_published:
            return entry
        return replace(
            entry, events_published=int(record["count"]), events_offset=int(record["offset"])
        )
    if kind == "paused":
        return replace(
            entry,
            status=Status.PAUSED,
            gpu_ids=(),
            paused_checkpoint=record.get("checkpoint"),
            paused_step=record.get("step"),
            # Journals written before poisoned checkpoints were marked resume from the pause's.
            resume_checkpoint=record.get("resume_checkpoint", record.get("checkpoint")),
            control_offset=int(record.get("control_offset", entry.control_offset)),
        )
    if kind == "finished":
        if entry.status is Status.FINISHED:
            return entry  # the first outcome is the outcome
        return replace(entry, status=Status.FINISHED, outcome=dict(record["outcome"]))
    if kind == "outcome_reported":
        return replace(entry, outcome_reported=True)
    return entry


# --- decisions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capacity:
    """What the agent has free right now."""

    free_gpu_ids: tuple[int, ...]
    labels: frozenset[str]
    free_slots: int


@dataclass(frozen=True, slots=True)
class Start:
    """Start the stage on these GPUs."""

    gpu_ids: tuple[int, ...]
    action: Literal["launch"] = "launch"


@dataclass(frozen=True, slots=True)
class Replay:
    """The command finished before: report the same outcome again, do not run."""

    outcome: JsonDict
    action: Literal["replay"] = "replay"


@dataclass(frozen=True, slots=True)
class Ignore:
    """Nothing to do (it is running, or paused): say why in the log."""

    reason: str
    action: Literal["ignore"] = "ignore"


@dataclass(frozen=True, slots=True)
class Reject:
    reason: str
    action: Literal["reject"] = "reject"


RunDecision = Start | Replay | Ignore | Reject


def decide_run(
    entry: Entry | None, gpus_needed: int, labels_needed: Iterable[str], capacity: Capacity
) -> RunDecision:
    """What a RunStage does, given the journal's entry for its command id."""
    if entry is not None:
        if entry.status is Status.FINISHED and entry.outcome is not None:
            return Replay(entry.outcome)
        if entry.status is Status.PAUSED:
            return Ignore("paused: ResumeStage continues it")
        return Ignore("already running")
    missing = sorted(set(labels_needed) - capacity.labels)
    if missing:
        return Reject(f"agent lacks labels {missing}")
    if capacity.free_slots <= 0:
        return Reject("agent runs as many stages as it has slots")
    if gpus_needed > len(capacity.free_gpu_ids):
        return Reject(
            f"stage needs {gpus_needed} GPU(s), agent has {len(capacity.free_gpu_ids)} free"
        )
    return Start(tuple(sorted(capacity.free_gpu_ids)[:gpus_needed]))


@dataclass(frozen=True, slots=True)
class ControlDecision:
    """``forward``: write it to the running stage's control file; ``resume``: relaunch from the
    last good checkpoint; ``cancel_paused``: finish a paused stage as cancelled without a
    process; ``queue``: keep it for the stage's next run (it is paused); ``refuse``: it cannot
    be applied, the reason is reported (ActionRefused)."""

    action: Literal["forward", "resume", "cancel_paused", "queue", "refuse"]
    reason: str = ""


def decide_control(entry: Entry | None, kind: ActionKind) -> ControlDecision:
    if entry is None:
        return ControlDecision("refuse", "no such stage on this agent")
    if entry.status is Status.FINISHED:
        return ControlDecision("refuse", "the stage has finished")
    if entry.status is Status.PAUSED:
        if kind == "resume":
            return ControlDecision("resume")
        if kind == "cancel":
            return ControlDecision("cancel_paused")
        if kind == "pause":
            return ControlDecision("refuse", "already paused")
        return ControlDecision("queue", "applied at the first step after ResumeStage")
    if kind == "resume":
        return ControlDecision("refuse", "not paused")
    return ControlDecision("forward")


@dataclass(frozen=True, slots=True)
class Recovery:
    """What to do, at agent start, with an entry that was not finished."""

    action: Literal["adopt", "collect", "lost", "report", "none"]


def decide_recovery(entry: Entry, process_alive: bool, result_written: bool) -> Recovery:
    """After a restart: re-attach to a stage process that still runs, collect the outcome one
    left behind, or report it lost (its process died with no outcome: it never runs again under
    this command id; a retry is a new attempt)."""
    if entry.status is Status.FINISHED:
        return Recovery("none" if entry.outcome_reported else "report")
    if entry.status is Status.PAUSED:
        return Recovery("none")
    if result_written:
        return Recovery("collect")
    if process_alive:
        return Recovery("adopt")
    return Recovery("lost")


@dataclass(frozen=True, slots=True)
class Usage:
    gpu_ids: frozenset[int] = field(default_factory=frozenset)
    running: tuple[str, ...] = ()


def usage(entries: Mapping[str, Entry]) -> Usage:
    """GPUs held and command ids running (a paused stage holds no GPU)."""
    running = tuple(sorted(c for c, e in entries.items() if e.status is Status.RUNNING))
    gpus = frozenset(g for c in running for g in entries[c].gpu_ids)
    return Usage(gpus, running)
