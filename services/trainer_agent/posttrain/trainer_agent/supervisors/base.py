"""The supervisor interface: what the agent needs from whatever runs a stage process.

The agent decides (``core.decide``); a supervisor carries out the process side of it. Three
implementations exist, and the interface is the same for each (``choice`` picks one per stage):

- ``local`` (``local.py``): a stage process on this host, forked from the zygote (or spawned),
  in its own session so that it outlives the agent.
- ``ssh`` (``ssh.py``): the same stage process on a remote host, started detached over SSH; the
  supervisor mirrors the attempt directory between the two hosts (``push``: control lines out;
  the run's output, events and result back as it reads them) and re-attaches after a dropped
  connection or an agent restart from what the handle records (pid file, start time).
- ``ranks`` (``ranks.py``): N local processes of one stage (torchrun's launcher, one per GPU);
  the handle names the stage's process group, rank 0 writes the result and events.

The contract every implementation keeps:

- **The local attempt directory is the stage's mailbox** (``stage_files``): the agent writes
  ``spec-<n>.json`` and appends to ``control.jsonl`` there, and reads ``events.jsonl``,
  ``result-<n>.json`` and ``stage.log`` from there. A supervisor whose process runs elsewhere
  copies what the agent wrote to where the process reads it (``start``, ``push``) and what the
  process wrote back to the local directory (``pull``), appending, never rewriting what the
  agent has read (offsets into those files are recorded in the journal).
- **A handle is data**: ``StageHandle`` is recorded in the journal (``launched``) and is all a
  restarted agent has to find the process again, so it holds nothing but JSON-able values.
- **No blocking**: every method is a coroutine and returns promptly (slow work goes to a
  thread); none raises for a process that has ended, only for a supervisor that cannot act.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

# Signals the agent sends: a polite stop (SIGTERM to the process group) and a kill (SIGKILL).
StopSignal = Literal["term", "kill"]


class SupervisorError(RuntimeError):
    """The supervisor cannot act (cannot start a process, lost its host): the message says why,
    and is what the stage's failure reports."""


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    """Everything needed to start launch ``launch`` of a stage.

    ``attempt_dir`` already holds ``spec-<launch>.json`` (and the control file); the process
    runs ``python -m posttrain.trainer_agent.stage_process <attempt_dir> <launch>`` (or the
    equivalent path on a remote host) with ``env`` and ``cwd``, its stdout and stderr appended to
    ``<attempt_dir>/stage.log``. ``run`` is the RunStage payload (``run_mode``, resources,
    ``ssh_config`` are read from it by the supervisors that need them).
    """

    attempt_dir: Path
    launch: int
    env: Mapping[str, str]
    cwd: str
    gpu_ids: tuple[int, ...] = ()
    run: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StageHandle:
    """A started stage process, as recorded in the journal.

    ``supervisor`` names the implementation that started it (``Supervisor.name``); ``pid`` and
    ``start`` (its start time in clock ticks, 0 if unknown) identify it on ``host`` (``""``: this
    host) so that a reused pid is never taken for it; ``extra`` is the implementation's own
    JSON-able data (a remote pid-file path, a rank count).
    """

    supervisor: str
    pid: int
    start: int = 0
    host: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Supervisor(Protocol):
    """Starts, watches and signals stage processes of one kind (see the module docstring)."""

    #: The name recorded in ``StageHandle.supervisor`` ("local", "ssh", "ranks").
    name: str

    async def start(self, request: LaunchRequest) -> StageHandle:
        """Start the process (detached from the agent: it outlives it) and return its handle.

        Raises ``SupervisorError`` if it could not be started (the agent then fails the stage
        with that message)."""
        ...

    async def alive(self, handle: StageHandle) -> bool:
        """True while that very process (not a reused pid) runs. For a remote host that cannot
        be reached right now: True (the process goes on without us; ``pull`` re-attaches)."""
        ...

    async def signal(self, handle: StageHandle, sig: StopSignal) -> None:
        """Send SIGTERM ("term") or SIGKILL ("kill") to the stage's whole process group (every
        rank, everything it started). Nothing happens for a process that has ended."""
        ...

    async def push(self, handle: StageHandle, attempt_dir: Path) -> None:
        """The agent appended to ``attempt_dir/control.jsonl``: make those lines readable by the
        process (local: nothing to do, it reads the same file)."""
        ...

    async def pull(self, handle: StageHandle, attempt_dir: Path) -> None:
        """Bring what the process wrote (events, result, log) into the local ``attempt_dir``
        (local: nothing to do). Called before each look at those files."""
        ...

    def reap(self) -> None:
        """Collect ended children of this agent (so that none lingers as a zombie)."""
        ...

    def close(self) -> None:
        """Release the supervisor's own resources (helper processes, connections); the stage
        processes go on."""
        ...
