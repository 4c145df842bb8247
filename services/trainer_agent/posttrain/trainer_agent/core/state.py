"""``entries = fold(events)``: the agent's journal state, one mutator per journal event.

One ``Entry`` per RunStage command id. Entries are immutable; a mutator returns the entry that
follows from the event and reads nothing but the event, so replaying a journal always gives the
same state. Events about a command id never accepted are ignored, never invent an entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from posttrain.trainer_agent.core.events import (
    Accepted,
    EventsPublished,
    Finished,
    JournalEvent,
    JsonDict,
    Launched,
    OutcomeReported,
    Paused,
    Signalled,
    StopReason,
    StopRequested,
)


class Status(StrEnum):
    RUNNING = "running"  # a stage process was launched and has not reported an outcome
    PAUSED = "paused"  # stopped at a checkpoint by PauseStage; ResumeStage relaunches it
    FINISHED = "finished"  # succeeded or failed: the outcome is final for this command id


@dataclass(frozen=True, slots=True)
class Launch:
    """One process of a stage (the first run, or a run resumed after a pause), and the
    supervisor handle that finds it again."""

    number: int
    pid: int
    pid_start: int  # the process's start time (clock ticks), so a reused pid is not ours
    started_at: float
    resume_from: str | None = None
    supervisor: str = "local"
    host: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Stop:
    """The agent is stopping the stage: why, and when it signals it."""

    reason: StopReason
    term_at: float
    kill_at: float
    sent_term: bool = False
    sent_kill: bool = False


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
    stop: Stop | None = None
    # The final report: {"type": "StageSucceeded" | "StageFailed", "data": {...}}.
    outcome: JsonDict | None = None
    outcome_reported: bool = False

    @property
    def launch(self) -> Launch | None:
        return self.launches[-1] if self.launches else None


Entries = dict[str, Entry]
Mutator = Callable[[Entry, Any], Entry]
_MUTATORS: dict[type[Any], Mutator] = {}


def _on(cls: type[JournalEvent]) -> Callable[[Mutator], Mutator]:
    def register(fn: Mutator) -> Mutator:
        _MUTATORS[cls] = fn
        return fn

    return register


def fold(events: Iterable[JournalEvent], initial: Mapping[str, Entry] | None = None) -> Entries:
    """The journal's state from its events in order (after ``initial``, the state so far)."""
    entries: Entries = dict(initial or {})
    for event in events:
        current = entries.get(event.command_id)
        if isinstance(event, Accepted):
            if current is None:
                entries[event.command_id] = _accepted(event)
        elif current is not None:
            entries[event.command_id] = _MUTATORS[type(event)](current, event)
    return entries


def _accepted(e: Accepted) -> Entry:
    return Entry(
        command_id=e.command_id,
        run=dict(e.run),
        status=Status.RUNNING,
        attempt_dir=e.attempt_dir,
        gpu_ids=tuple(e.gpu_ids),
    )


@_on(Launched)
def _launched(entry: Entry, e: Launched) -> Entry:
    launch = Launch(
        number=len(entry.launches) + 1,
        pid=e.pid,
        pid_start=e.pid_start,
        started_at=e.started_at,
        resume_from=e.resume_from,
        supervisor=e.supervisor,
        host=e.host,
        extra=dict(e.extra),
    )
    return replace(
        entry,
        status=Status.RUNNING,
        launches=(*entry.launches, launch),
        gpu_ids=entry.gpu_ids if e.gpu_ids is None else tuple(e.gpu_ids),
        control_offset=entry.control_offset if e.control_offset is None else e.control_offset,
    )


@_on(EventsPublished)
def _events_published(entry: Entry, e: EventsPublished) -> Entry:
    if e.count <= entry.events_published:
        return entry  # an older count, written before a newer one: never go back
    return replace(entry, events_published=e.count, events_offset=e.offset)


@_on(Paused)
def _paused(entry: Entry, e: Paused) -> Entry:
    return replace(
        entry,
        status=Status.PAUSED,
        gpu_ids=(),
        paused_checkpoint=e.checkpoint,
        paused_step=e.step,
        resume_checkpoint=e.resume_checkpoint,
        control_offset=entry.control_offset if e.control_offset is None else e.control_offset,
    )


@_on(StopRequested)
def _stop_requested(entry: Entry, e: StopRequested) -> Entry:
    if entry.stop is not None:
        return entry  # the first reason stands (a cancel after a timeout is still a timeout)
    return replace(entry, stop=Stop(e.reason, e.term_at, e.kill_at))


@_on(Signalled)
def _signalled(entry: Entry, e: Signalled) -> Entry:
    if entry.stop is None:
        return entry
    if e.signal == "term":
        return replace(entry, stop=replace(entry.stop, sent_term=True))
    return replace(entry, stop=replace(entry.stop, sent_kill=True))


@_on(Finished)
def _finished(entry: Entry, e: Finished) -> Entry:
    if entry.status is Status.FINISHED:
        return entry  # the first outcome is the outcome
    return replace(entry, status=Status.FINISHED, outcome=dict(e.outcome))


@_on(OutcomeReported)
def _outcome_reported(entry: Entry, e: OutcomeReported) -> Entry:
    return replace(entry, outcome_reported=True)


# --- what the state says about the agent --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    gpu_ids: frozenset[int] = field(default_factory=frozenset)
    running: tuple[str, ...] = ()


def usage(entries: Mapping[str, Entry]) -> Usage:
    """GPUs held and command ids running (a paused stage holds no GPU)."""
    running = tuple(sorted(c for c, e in entries.items() if e.status is Status.RUNNING))
    gpus = frozenset(g for c in running for g in entries[c].gpu_ids)
    return Usage(gpus, running)
