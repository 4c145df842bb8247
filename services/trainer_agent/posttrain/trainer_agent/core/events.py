"""The agent's journal events: what happened to each RunStage command on this agent.

The journal (``journal_file``) is an append-only JSONL file of these events, one per line, each
``{"kind": ..., "command_id": ..., "at": ..., "v": 2, **fields}``. ``from_record`` reads any
line ever written, upcasting today's unversioned lines (``v`` absent: version 1) so that an
agent restarted after an upgrade carries on from its old journal; ``to_record`` writes the
current version. ``core.state`` folds them; ``core.decide`` decides which to append.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

JsonDict = dict[str, Any]
VERSION = 2

StopReason = Literal["timeout", "cancelled"]
StopSignal = Literal["term", "kill"]


@dataclass(frozen=True, slots=True)
class Accepted:
    """A RunStage was taken on: its payload, its directory and the GPUs it holds."""

    command_id: str
    run: JsonDict
    attempt_dir: str
    gpu_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Launched:
    """A stage process was started (the first launch, or a resume after a pause).

    ``supervisor``, ``host`` and ``extra`` are the ``StageHandle`` that finds the process again
    after a restart (``supervisors.base``)."""

    command_id: str
    pid: int
    pid_start: int = 0
    started_at: float = 0.0
    resume_from: str | None = None
    gpu_ids: tuple[int, ...] | None = None  # None: the ones accepted
    control_offset: int | None = None  # None: where the last launch left it
    supervisor: str = "local"
    host: str = ""
    extra: JsonDict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EventsPublished:
    """The stage's events file is on Kafka up to ``count`` lines (``offset`` bytes)."""

    command_id: str
    count: int
    offset: int


@dataclass(frozen=True, slots=True)
class Paused:
    """The stage stopped at a checkpoint (PauseStage); it holds no GPU until resumed."""

    command_id: str
    checkpoint: str | None = None
    resume_checkpoint: str | None = None
    step: int | None = None
    control_offset: int | None = None


@dataclass(frozen=True, slots=True)
class StopRequested:
    """The agent stops the stage (cancel or timeout): SIGTERM at ``term_at``, SIGKILL at
    ``kill_at`` (wall-clock seconds), unless it ends before."""

    command_id: str
    reason: StopReason
    term_at: float
    kill_at: float


@dataclass(frozen=True, slots=True)
class Signalled:
    """SIGTERM ("term") or SIGKILL ("kill") was sent to the stage's process group."""

    command_id: str
    signal: StopSignal


@dataclass(frozen=True, slots=True)
class Finished:
    """The final outcome: ``{"type": "StageSucceeded" | "StageFailed", "data": {...}}``."""

    command_id: str
    outcome: JsonDict


@dataclass(frozen=True, slots=True)
class OutcomeReported:
    """The outcome is on Kafka."""

    command_id: str


JournalEvent = (
    Accepted
    | Launched
    | EventsPublished
    | Paused
    | StopRequested
    | Signalled
    | Finished
    | OutcomeReported
)

KINDS: dict[str, type[JournalEvent]] = {
    "accepted": Accepted,
    "launched": Launched,
    "events_published": EventsPublished,
    "paused": Paused,
    "stop_requested": StopRequested,
    "signalled": Signalled,
    "finished": Finished,
    "outcome_reported": OutcomeReported,
}
_KIND_OF = {cls: kind for kind, cls in KINDS.items()}


def kind_of(event: JournalEvent) -> str:
    return _KIND_OF[type(event)]


def to_record(event: JournalEvent, at: float) -> JsonDict:
    """The journal line for ``event`` (current version), written at ``at``."""
    return {"kind": kind_of(event), "v": VERSION, "at": at, **asdict(event)}


def _upcast_v1(kind: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """Today's (unversioned) lines: the same kinds and names, fewer fields."""
    fields = dict(record)
    if kind == "paused" and "resume_checkpoint" not in fields:
        # Written before poisoned checkpoints were marked: resume from the pause's own.
        fields["resume_checkpoint"] = fields.get("checkpoint")
    return fields


def from_record(record: Mapping[str, Any]) -> JournalEvent | None:
    """The event a journal line holds; None for a line this version does not know (a kind
    from a newer agent, a line without a command id): it is skipped, never guessed at."""
    kind = record.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        return None
    if not isinstance(record.get("command_id"), str):
        return None
    if record.get("v") is None:
        record = _upcast_v1(kind, record)
    cls = KINDS[kind]
    names = cls.__dataclass_fields__
    data = {k: v for k, v in record.items() if k in names}
    for name in ("gpu_ids",):
        if isinstance(data.get(name), list):
            data[name] = tuple(int(g) for g in data[name])
    try:
        return cls(**data)
    except TypeError:
        return None  # a required field is missing: not a line this agent wrote whole
