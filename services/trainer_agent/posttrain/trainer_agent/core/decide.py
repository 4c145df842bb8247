"""``decide(entries, observation, setup) -> Decision``: what the agent does about what it saw.

Observations are what the shell saw (a RunStage or a control command read from Kafka, a look at
a stage process and the files it wrote, an agent restart), each with the time it was seen; the
decision is a list of actions for the shell to carry out in order (journal events to append,
reports to send, a process to start or signal, a control line to write). Nothing here reads a
clock, a file or a process: the same observation on the same journal state always gives the same
decision, which is what the golden histories (tests/unit/trainer_agent/golden) check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from posttrain.events.actions import action_of
from posttrain.events.messages import (
    ActionApplied,
    ActionKind,
    ActionRefused,
    Message,
    ResumeStage,
    RunStage,
    StageControl,
    StagePaused,
    StageRejected,
    StageStarted,
)
from posttrain.events.messages.stage import report_fields
from posttrain.trainer_agent.core import paths
from posttrain.trainer_agent.core.events import (
    Accepted,
    Finished,
    JournalEvent,
    JsonDict,
    OutcomeReported,
    Paused,
    Signalled,
    StopRequested,
    StopSignal,
)
from posttrain.trainer_agent.core.outcomes import (
    LOG_NAME,
    died,
    entry_fields,
    failed,
    from_result,
    outcome_message,
)
from posttrain.trainer_agent.core.state import Entry, Status, usage


@dataclass(frozen=True, slots=True)
class Setup:
    """The agent's fixed configuration, as far as decisions need it."""

    agent_id: str
    work_dir: str
    gpus: int = 0
    labels: frozenset[str] = frozenset()
    slots: int = 1
    # After CancelStage, how long a stage may take to reach a step boundary before SIGTERM,
    # and then how long before SIGKILL.
    cancel_grace_s: float = 30.0
    kill_grace_s: float = 15.0


# --- observations -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunReceived:
    command: RunStage
    now: float


@dataclass(frozen=True, slots=True)
class ControlReceived:
    command: StageControl
    now: float


@dataclass(frozen=True, slots=True)
class Looked:
    """A look at a stage: whether its process runs, the result its current launch wrote (if
    any), the end of its log, its exit status where the supervisor knows it (negative: the
    signal that ended it)."""

    command_id: str
    now: float
    alive: bool
    result: JsonDict | None = None
    log_tail: str = ""
    exit_code: int | None = None
    # The control lines written to the stage's control file past the offset its result says
    # it read (``type`` and fields): they arrived after its last step boundary.
    unread_controls: tuple[JsonDict, ...] = ()


@dataclass(frozen=True, slots=True)
class LaunchFailed:
    """The first launch of a stage could not start."""

    command_id: str
    error: str
    now: float


@dataclass(frozen=True, slots=True)
class Restarted:
    """At agent start, for each journal entry: does its process still run, did its current
    launch write a result?"""

    command_id: str
    now: float
    alive: bool = False
    result_written: bool = False


Observation = RunReceived | ControlReceived | Looked | LaunchFailed | Restarted


# --- actions ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """Append this event to the journal (fsync'ed before the next action)."""

    event: JournalEvent


@dataclass(frozen=True, slots=True)
class Send:
    """Publish this report on ``posttrain.stage.reports`` (key: its pipeline id)."""

    message: Message

    @property
    def key(self) -> str:
        return str(getattr(self.message, "pipeline_id", ""))


@dataclass(frozen=True, slots=True)
class Start:
    """Start launch ``number`` of a stage: write its spec, start its process on a supervisor,
    record ``Launched``; then send ``started`` (the first launch's StageStarted), if any."""

    command_id: str
    number: int
    gpu_ids: tuple[int, ...]
    control_offset: int
    resume_from: str | None = None
    resume_action: JsonDict | None = None
    resume_step: int | None = None
    started: StageStarted | None = None


@dataclass(frozen=True, slots=True)
class SignalStage:
    """Send SIGTERM / SIGKILL to the stage's process group."""

    command_id: str
    signal: StopSignal


@dataclass(frozen=True, slots=True)
class WriteControl:
    """Append this command to the stage's control file (as the codec writes it) and hand it on
    to the process."""

    command_id: str
    command: StageControl


Action = Record | Send | Start | SignalStage | WriteControl


@dataclass(frozen=True, slots=True)
class Decision:
    """``name`` says what was decided (for logs and counters), ``reason`` why, where useful."""

    name: str
    actions: tuple[Action, ...] = ()
    reason: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict)


NOTHING = Decision("none")


def decide(entries: Mapping[str, Entry], obs: Observation, setup: Setup) -> Decision:
    """What to do about ``obs``, given the journal's state (never changed here)."""
    if isinstance(obs, RunReceived):
        return _run(entries, obs, setup)
    if isinstance(obs, ControlReceived):
        return _control(entries, obs, setup)
    entry = entries.get(obs.command_id)
    if entry is None:
        return NOTHING
    if isinstance(obs, Looked):
        return _look(entry, obs, setup)
    if isinstance(obs, LaunchFailed):
        return _finish(
            "failed", failed(entry, "error", f"stage could not start: {obs.error}", obs.now)
        )
    return _recover(entry, obs)


# --- capacity -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capacity:
    """What the agent has free right now."""

    free_gpu_ids: tuple[int, ...]
    labels: frozenset[str]
    free_slots: int


def capacity(entries: Mapping[str, Entry], setup: Setup) -> Capacity:
    used = usage(entries)
    free = tuple(g for g in range(setup.gpus) if g not in used.gpu_ids)
    return Capacity(free, setup.labels, setup.slots - len(used.running))


def attempt_dir(setup: Setup, command_id: str) -> str:
    return paths.attempt_dir(setup.work_dir, command_id)


# --- RunStage -----------------------------------------------------------------------------------


def _run(entries: Mapping[str, Entry], obs: RunReceived, setup: Setup) -> Decision:
    command = obs.command
    entry = entries.get(command.command_id)
    if entry is not None:
        if entry.status is Status.FINISHED and entry.outcome is not None:
            # A re-sent RunStage is answered from the journal, never run twice.
            return Decision("replay", (Send(outcome_message(entry.outcome, replayed=True)),))
        if entry.status is Status.PAUSED:
            return Decision("ignore", reason="paused: ResumeStage continues it")
        return Decision("ignore", reason="already running")
    reason = _no_room(capacity(entries, setup), command.resources.gpus, command.resources.labels)
    if reason is not None:
        rejected = StageRejected(**report_fields(command, setup.agent_id), reason=reason)
        return Decision("reject", (Send(rejected),), reason)
    free = capacity(entries, setup).free_gpu_ids
    gpu_ids = tuple(sorted(free)[: command.resources.gpus])
    directory = attempt_dir(setup, command.command_id)
    started = StageStarted(
        **report_fields(command, setup.agent_id),
        started_at=obs.now,
        log_path=str(PurePath(directory) / LOG_NAME),
    )
    return Decision(
        "launch",
        (
            Record(
                Accepted(command.command_id, command.model_dump(mode="json"), directory, gpu_ids)
            ),
            Start(
                command.command_id,
                1,
                gpu_ids,
                control_offset=0,
                resume_from=command.resume_from,
                started=started,
            ),
        ),
    )


def _no_room(room: Capacity, gpus: int, labels: list[str]) -> str | None:
    missing = sorted(set(labels) - room.labels)
    if missing:
        return f"agent lacks labels {missing}"
    if room.free_slots <= 0:
        return "agent runs as many stages as it has slots"
    if gpus > len(room.free_gpu_ids):
        return f"stage needs {gpus} GPU(s), agent has {len(room.free_gpu_ids)} free"
    return None


# --- control commands ---------------------------------------------------------------------------


def control_verdict(entry: Entry | None, kind: ActionKind) -> tuple[str, str]:
    """``forward``: write it to the running stage's control file; ``resume``: relaunch from the
    last good checkpoint; ``cancel_paused``: finish a paused stage as cancelled without a
    process; ``queue``: keep it for the stage's next run (it is paused); ``refuse``: it cannot
    be applied, the reason is reported (ActionRefused)."""
    if entry is None:
        return "refuse", "no such stage on this agent"
    if entry.status is Status.FINISHED:
        return "refuse", "the stage has finished"
    if entry.status is Status.PAUSED:
        if kind == "resume":
            return "resume", ""
        if kind == "cancel":
            return "cancel_paused", ""
        if kind == "pause":
            return "refuse", "already paused"
        return "queue", "applied at the first step after ResumeStage"
    if kind == "resume":
        return "refuse", "not paused"
    return "forward", ""


def _control(entries: Mapping[str, Entry], obs: ControlReceived, setup: Setup) -> Decision:
    command = obs.command
    kind = action_of(command)
    assert kind is not None  # the shell observes only commands that carry an action
    entry = entries.get(command.run_command_id)
    verdict, reason = control_verdict(entry, kind)
    if verdict == "refuse":
        return _refuse(command, kind, entry, reason, setup)
    assert entry is not None
    if verdict in ("forward", "queue"):
        actions: list[Action] = [WriteControl(entry.command_id, command)]
        if kind == "cancel" and entry.launch is not None and entry.stop is None:
            term_at = obs.now + setup.cancel_grace_s
            actions.append(
                Record(
                    StopRequested(
                        entry.command_id, "cancelled", term_at, term_at + setup.kill_grace_s
                    )
                )
            )
        return Decision(verdict, tuple(actions), reason)
    if verdict == "resume":
        room = capacity(entries, setup)
        gpus = int((entry.run.get("resources") or {}).get("gpus", 0))
        if gpus > len(room.free_gpu_ids) or room.free_slots <= 0:
            return _refuse(
                command,
                kind,
                entry,
                f"no capacity to resume: the stage needs {gpus} GPU(s) and a slot, the agent "
                f"has {len(room.free_gpu_ids)} GPU(s) and {max(room.free_slots, 0)} slot(s) free",
                setup,
            )
        # A checkpoint the user names, else the last one whose weights are finite.
        named = command.checkpoint if isinstance(command, ResumeStage) else None
        start = Start(
            entry.command_id,
            len(entry.launches) + 1,
            tuple(sorted(room.free_gpu_ids)[:gpus]),
            control_offset=entry.control_offset,
            resume_from=named or entry.resume_checkpoint,
            resume_action={"action_id": command.action_id, "reason": command.reason},
            resume_step=entry.paused_step,
        )
        return Decision("resume", (start,))
    # cancel_paused
    step = entry.paused_step or 0
    applied = ActionApplied(
        **entry_fields(entry, setup.agent_id),
        action_id=command.action_id,
        action="cancel",
        step=step,
    )
    cancelled = failed(entry, "cancelled", f"cancelled while paused at step {step}", obs.now)
    return Decision("cancel_paused", (Send(applied), *_finish_actions(cancelled)))


def _refuse(
    command: StageControl, kind: ActionKind, entry: Entry | None, reason: str, setup: Setup
) -> Decision:
    """A control this agent cannot apply is reported, not only logged."""
    refused = ActionRefused(
        action_id=command.action_id,
        pipeline_id=command.pipeline_id,
        stage=command.stage,
        attempt=command.attempt,
        action=kind,
        reason=reason,
        step=entry.paused_step if entry is not None else None,
        agent_id=setup.agent_id,
        command_id=command.run_command_id,
        job_id=entry.run.get("job_id") if entry is not None else None,
    )
    return Decision("refuse", (Send(refused),), reason)


# --- a look at a stage: outcomes and deadlines --------------------------------------------------


def _look(entry: Entry, obs: Looked, setup: Setup) -> Decision:
    if entry.status is Status.FINISHED:
        if entry.outcome_reported or entry.outcome is None:
            return NOTHING
        return _report(entry)
    if entry.status is not Status.RUNNING or entry.launch is None:
        return NOTHING
    if obs.result is not None:
        return _collect(entry, obs.result, obs.now, setup, obs.unread_controls)
    if not obs.alive:
        return _finish("died", died(entry, obs.now, obs.log_tail, obs.exit_code))
    return _deadlines(entry, obs.now, setup)


def _collect(
    entry: Entry,
    result: JsonDict,
    now: float,
    setup: Setup,
    unread: tuple[JsonDict, ...] = (),
) -> Decision:
    """The result a launch wrote: paused (a resume goes on from it), or its outcome. A
    control the ended stage never read is refused before the outcome: no request is dropped
    (a paused stage keeps them: its resume reads on from the same offset)."""
    status = result.get("status")
    if status == "paused":
        # A result written before checkpoints were marked resumes from its own checkpoint.
        resume = result.get("resume_checkpoint", result.get("checkpoint"))
        step = result.get("step")
        paused = Paused(
            entry.command_id,
            checkpoint=result.get("checkpoint"),
            resume_checkpoint=resume,
            step=step,
            control_offset=int(result.get("control_offset", entry.control_offset)),
        )
        report = StagePaused(
            **entry_fields(entry, setup.agent_id),
            step=int(step or 0),
            checkpoint=result.get("checkpoint"),
            non_finite=list(result.get("non_finite") or []),
            resume_checkpoint=resume,
        )
        return Decision("paused", (Record(paused), Send(report)))
    finished = _finish(
        "succeeded" if status == "succeeded" else "failed",
        from_result(entry, result, now, setup.agent_id),
    )
    refusals = _unread_refusals(entry, unread, setup, f"the stage ended ({status}) first")
    if not refusals:
        return finished
    return Decision(finished.name, (*refusals, *finished.actions), fields=finished.fields)


def _unread_refusals(
    entry: Entry, unread: tuple[JsonDict, ...], setup: Setup, reason: str
) -> tuple[Action, ...]:
    """ActionRefused for each control line the stage never read (resume lines excepted: the
    agent, not the stage, carries a resume out)."""
    refusals: list[Action] = []
    for line in unread:
        kind = action_of(str(line.get("type")))
        if kind is None or kind == "resume":
            continue
        refusals.append(
            Send(
                ActionRefused(
                    action_id=str(line.get("action_id", "")),
                    pipeline_id=str(entry.run["pipeline_id"]),
                    stage=str(entry.run["stage"]),
                    attempt=int(entry.run["attempt"]),
                    action=kind,
                    reason=reason,
                    step=None,
                    agent_id=setup.agent_id,
                    command_id=entry.command_id,
                    job_id=entry.run.get("job_id"),
                )
            )
        )
    return tuple(refusals)


def _deadlines(entry: Entry, now: float, setup: Setup) -> Decision:
    """A running stage past its timeout is stopped; a stop in progress is carried on: SIGTERM
    at its term time, SIGKILL at its kill time."""
    actions: list[Action] = []
    stop = entry.stop
    timeout = entry.run.get("timeout_s")
    if stop is None and timeout and now - entry.launches[0].started_at > float(timeout):
        requested = StopRequested(entry.command_id, "timeout", now, now + setup.kill_grace_s)
        actions.append(Record(requested))
        term_at, kill_at, sent_term, sent_kill = now, requested.kill_at, False, False
    elif stop is not None:
        term_at, kill_at, sent_term, sent_kill = (
            stop.term_at,
            stop.kill_at,
            stop.sent_term,
            stop.sent_kill,
        )
    else:
        return NOTHING
    if not sent_term and now >= term_at:
        actions += [
            SignalStage(entry.command_id, "term"),
            Record(Signalled(entry.command_id, "term")),
        ]
    elif sent_term and not sent_kill and now >= kill_at:
        actions += [
            SignalStage(entry.command_id, "kill"),
            Record(Signalled(entry.command_id, "kill")),
        ]
    return Decision("stop", tuple(actions)) if actions else NOTHING


# --- recovery after a restart -------------------------------------------------------------------


def recovery_verdict(entry: Entry, alive: bool, result_written: bool) -> str:
    """``adopt`` a stage process that still runs, ``collect`` the outcome one left behind (the
    first look does), ``lost``: its process died with no outcome (it never runs again under this
    command id; a retry is a new attempt), ``report`` an outcome not yet on Kafka, ``none``."""
    if entry.status is Status.FINISHED:
        return "none" if entry.outcome_reported else "report"
    if entry.status is Status.PAUSED:
        return "none"
    if result_written:
        return "collect"
    if alive:
        return "adopt"
    return "lost"


def _recover(entry: Entry, obs: Restarted) -> Decision:
    verdict = recovery_verdict(entry, obs.alive, obs.result_written)
    if verdict == "lost":
        lost = failed(
            entry,
            "lost",
            "the stage process ended while the agent was down and left no outcome",
            obs.now,
        )
        return _finish("lost", lost)
    if verdict == "report":
        return _report(entry)
    return Decision(verdict)


# --- outcomes -----------------------------------------------------------------------------------


def _finish(name: str, outcome: JsonDict) -> Decision:
    fields = {"outcome": outcome["type"], "kind": outcome["data"].get("kind", "succeeded")}
    return Decision(name, _finish_actions(outcome), fields=fields)


def _finish_actions(outcome: JsonDict) -> tuple[Action, ...]:
    """Record the outcome, send it, record that it was sent (a crash in between reports it
    again after the restart: never a stage without its outcome)."""
    command_id = str(outcome["data"]["command_id"])
    return (
        Record(Finished(command_id, outcome)),
        Send(outcome_message(outcome, replayed=False)),
        Record(OutcomeReported(command_id)),
    )


def _report(entry: Entry) -> Decision:
    assert entry.outcome is not None
    return Decision(
        "report",
        (
            Send(outcome_message(entry.outcome, replayed=False)),
            Record(OutcomeReported(entry.command_id)),
        ),
    )
