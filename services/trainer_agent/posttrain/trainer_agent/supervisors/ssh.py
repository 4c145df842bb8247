"""The SSH supervisor: a ``run_mode: ssh`` stage runs on the host its ``ssh_config`` names.

The stage process there is the same program as a local one (``python -m
posttrain.trainer_agent.stage_process <run folder> <launch>``, with ``ssh_config.python``), so
every task, control and resume works the same; only where its files live differs:

- ``start``: the launch's spec is rewritten for the remote host (its work directory is
  ``ssh_config.remote_dir``, its metrics go to ``<job_id>_metrics.jsonl`` in its run folder, it is
  given no broker) and copied, with the stage's control file, into the run folder
  ``<remote_dir>/<command id>-launch<n>``; the process starts there detached from the connection
  (``ssh_remote``), with ``ssh_config.env``, the stage's identity (``IDENTITY_VARS``) and the GPUs
  it was assigned, never the agent host's environment or secrets.
- One ``SshRunner`` per launch follows the run (``ssh_runner``): metric lines onto
  ``posttrain.metrics`` through a reporter of the agent's, keyed by remote file and line so that
  none is lost or doubled across a dropped connection or an agent restart; the stage's output is
  appended to the local ``stage.log`` and its events to the local ``events.jsonl``, which the
  agent relays as it does a local stage's. When the run ended and all it wrote is read, its
  result is copied to the local ``result-<n>.json`` (``pull``), or, if it ended without one, the
  exit status is written to ``stage.log`` for the failure to quote.
- ``push`` appends the control lines the agent wrote locally since the last push to the remote
  control file; ``signal`` signals the remote process group. Both run in the background, so
  that a host that cannot be reached holds up no other stage of the agent.

Everything needed to find a run again is in its handle (``StageHandle.extra``: the run's record,
the ``ssh_config``, which names the key secret but never holds a key) and in the state folder
``ssh-<n>`` of the attempt directory (offsets read, control bytes pushed): an agent restarted on
the same work directory re-attaches and goes on where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from posttrain.events.kafka import KafkaSettings
from posttrain.events.tasks import SshConfig, stage_config
from posttrain.trainer_agent.core.paths import safe_name
from posttrain.trainer_agent.metrics_file import metrics_file_path
from posttrain.trainer_agent.reporting import MetricsReporter
from posttrain.trainer_agent.stage_files import (
    CONTROL,
    EVENTS,
    LOG,
    append_line,
    read_json,
    result_path,
    spec_path,
    write_json_atomic,
)
from posttrain.trainer_agent.stage_spec import IDENTITY_VARS
from posttrain.trainer_agent.supervisors.base import (
    LaunchRequest,
    StageHandle,
    StopSignal,
    SupervisorError,
)
from posttrain.trainer_agent.supervisors.ssh_connect import SshError
from posttrain.trainer_agent.supervisors.ssh_runner import (
    RemoteLaunch,
    SshOptions,
    SshRunner,
)

log = logging.getLogger(__name__)

STAGE_MODULE = "posttrain.trainer_agent.stage_process"
# The GPUs the agent assigned the stage: an agent fronting a remote host announces its GPUs.
GPUS_VAR = "CUDA_VISIBLE_DEVICES"
_PUSHED = "control.pushed"  # bytes of the local control file already in the remote one
_SIGNALS = {"term": "TERM", "kill": "KILL"}
# How long the end of a run may wait for its last points to reach Kafka (the rest is in the
# spill file, and re-read after a restart: the offsets were not saved past them).
_CLOSE_TIMEOUT_S = 30.0


def ssh_config_of(run: Mapping[str, Any]) -> SshConfig:
    """The ``ssh_config`` of a RunStage payload (validated by the orchestrator already)."""
    return SshConfig.model_validate(stage_config(run.get("params") or {}).get("ssh_config"))


@dataclass
class _Run:
    """One launch followed by this agent."""

    runner: SshRunner
    reporter: MetricsReporter
    attempt_dir: Path
    launch: int
    host: str
    settled: bool = False  # its ending is written into the attempt directory
    push_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class SshSupervisor:
    """Runs stage launches on remote hosts over SSH (see the module docstring)."""

    name = "ssh"

    def __init__(
        self, settings: KafkaSettings, spill_dir: Path, options: SshOptions | None = None
    ) -> None:
        self.settings = settings
        self.spill_dir = spill_dir
        self.options = options or SshOptions()
        self._runs: dict[tuple[str, int], _Run] = {}

    # --- the Supervisor interface ---------------------------------------------------------

    async def start(self, request: LaunchRequest) -> StageHandle:
        run = request.run
        try:
            config = ssh_config_of(run)
        except ValueError as exc:
            raise SupervisorError(f"ssh_config: {exc}") from None
        n = request.launch
        name = f"{safe_name(str(run['command_id']))}-launch{n}"
        run_dir = f"{config.remote_dir.rstrip('/')}/{name}"
        spec = read_json(spec_path(request.attempt_dir, n))
        if not isinstance(spec, dict):
            raise SupervisorError(f"no spec for launch {n} in {request.attempt_dir}")
        remote_spec = {
            **spec,
            "work_dir": config.remote_dir,
            "metrics_file": str(metrics_file_path(run_dir, str(run["job_id"]))),
            "kafka": {},
        }
        control = _read_bytes(request.attempt_dir / CONTROL)
        launch = RemoteLaunch(
            name,
            str(run["job_id"]),
            [config.python, "-m", STAGE_MODULE, run_dir, str(n)],
            env={k: request.env[k] for k in (*IDENTITY_VARS, GPUS_VAR) if k in request.env},
            files={spec_path(Path("."), n).name: orjson.dumps(remote_spec), CONTROL: control},
            result_file=result_path(Path("."), n).name,
        )
        state = self._new_run(request.attempt_dir, n, config, run)
        try:
            remote = await state.runner.start(launch)
        except (SshError, ValueError) as exc:
            await self._forget(state)
            raise SupervisorError(str(exc)) from None
        write_json_atomic(state.runner.state_dir / _PUSHED, len(control))
        return StageHandle(
            self.name,
            remote.pid,
            remote.start,
            host=config.host,
            extra={
                "attempt_dir": str(request.attempt_dir),
                "launch": n,
                "remote": remote.to_record(),
                "ssh_config": config.model_dump(),
                "routing": _routing(run),
            },
        )

    async def alive(self, handle: StageHandle) -> bool:
        """True until the run ended and all it wrote is read (or the host was given up on)."""
        return not (await self._run_of(handle)).runner.ended

    async def signal(self, handle: StageHandle, sig: StopSignal) -> None:
        """Sent in the background: a host that cannot be reached holds up no other stage (the
        runner retries until it gives up on the host, which fails the stage)."""
        state = await self._run_of(handle)
        if not state.runner.ended:
            self._background(state, self._signal(state, sig))

    async def push(self, handle: StageHandle, attempt_dir: Path) -> None:
        """In the background, one push at a time per run: the lines past what was pushed."""
        state = await self._run_of(handle)
        if not state.runner.ended:
            self._background(state, self._push(state, attempt_dir))

    async def pull(self, handle: StageHandle, attempt_dir: Path) -> None:
        """Output and events arrive as the runner reads them; once it is over, the ending."""
        state = await self._run_of(handle)
        if state.runner.ended and not state.settled:
            await self._settle(state)

    def reap(self) -> None:
        return None  # no child process of this agent runs a stage

    def close(self) -> None:
        for state in self._runs.values():
            for task in state.tasks:
                task.cancel()
            if not state.settled:
                state.runner.abandon()
                with contextlib.suppress(Exception):
                    state.reporter.close(timeout=5.0)
        self._runs.clear()

    # --- runs -----------------------------------------------------------------------------

    def _background(self, state: _Run, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)

    async def _signal(self, state: _Run, sig: StopSignal) -> None:
        try:
            await state.runner.signal(_SIGNALS[sig])
        except Exception as exc:
            log.warning("ssh: signal not sent", extra={"host": state.host, "error": str(exc)})

    async def _push(self, state: _Run, attempt_dir: Path) -> None:
        async with state.push_lock:
            pushed_file = state.runner.state_dir / _PUSHED
            pushed = read_json(pushed_file) or 0
            data = _read_bytes(attempt_dir / CONTROL)
            new = data[pushed : data.rfind(b"\n") + 1] if len(data) > pushed else b""
            if not new or state.runner.ended:
                return
            try:
                await state.runner.append_control(new)
            except Exception as exc:  # the next push (or none: the stage failed) carries them
                log.warning(
                    "ssh: control lines not pushed", extra={"host": state.host, "error": str(exc)}
                )
                return
            write_json_atomic(pushed_file, pushed + len(new))

    def _new_run(
        self, attempt_dir: Path, launch: int, config: SshConfig, run: Mapping[str, Any]
    ) -> _Run:
        routing = _routing(run)
        reporter = MetricsReporter(
            routing["job_id"],
            pipeline_id=routing["pipeline_id"],
            stage=routing["stage"],
            attempt=routing["attempt"],
            settings=self.settings,
            spill_dir=self.spill_dir,
        )
        runner = SshRunner(
            config,
            attempt_dir / f"ssh-{launch}",
            reporter,
            on_output=lambda chunk: _append_bytes(attempt_dir / LOG, chunk),
            on_event=lambda event: _append_event(attempt_dir, event),
            options=self.options,
        )
        state = _Run(runner, reporter, attempt_dir, launch, config.host)
        self._runs[(str(attempt_dir), launch)] = state
        return state

    async def _run_of(self, handle: StageHandle) -> _Run:
        """The followed run a handle names; after an agent restart, re-attached from it."""
        extra = handle.extra
        key = (str(extra["attempt_dir"]), int(extra["launch"]))
        state = self._runs.get(key)
        if state is None:
            config = SshConfig.model_validate(extra["ssh_config"])
            routing = extra["routing"]
            state = self._new_run(Path(key[0]), key[1], config, routing)
            await state.runner.attach(extra["remote"])
            log.info(
                "ssh: re-attached",
                extra={"host": config.host, "run_dir": extra["remote"]["run_dir"]},
            )
        return state

    async def _settle(self, state: _Run) -> None:
        """Write how the run ended into the local attempt directory, once."""
        try:
            outcome = await state.runner.wait()
        except Exception as exc:  # it gave up on the host: the stage fails saying why
            _append_bytes(state.attempt_dir / LOG, f"\nposttrain: {exc}\n".encode())
        else:
            if outcome.result is not None:
                write_json_atomic(result_path(state.attempt_dir, state.launch), outcome.result)
            else:
                status = (
                    f"exit status {outcome.exit_code}"
                    if outcome.exit_code is not None
                    else "no exit status (killed, or its host restarted)"
                )
                _append_bytes(
                    state.attempt_dir / LOG,
                    f"\nposttrain: the stage process on {state.host} ended with {status} "
                    "and wrote no result\n".encode(),
                )
        state.settled = True  # kept, so that a later look does not re-attach to it
        await self._release(state)

    async def _forget(self, state: _Run) -> None:
        self._runs.pop((str(state.attempt_dir), state.launch), None)
        await self._release(state)

    async def _release(self, state: _Run) -> None:
        state.runner.abandon()
        left = await asyncio.to_thread(state.reporter.close, _CLOSE_TIMEOUT_S)
        if left:
            log.warning(
                "ssh: metric points left in the spill file",
                extra={"job_id": state.reporter.job_id, "points": left},
            )


def _routing(run: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "job_id": str(run["job_id"]),
        "pipeline_id": run.get("pipeline_id"),
        "stage": run.get("stage"),
        "attempt": run.get("attempt"),
    }


def _append_event(attempt_dir: Path, event: dict[str, Any]) -> None:
    append_line(attempt_dir / EVENTS, event)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _append_bytes(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)
