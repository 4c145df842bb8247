"""A stage run on another host over SSH (``run_mode: ssh``), supervised from the agent.

``SshRunner`` is the remote counterpart of the local stage process. Its operations::

    handle = await sup.start(RemoteLaunch(...))   # start detached; returns the record to keep
    handle = await sup.attach(record)             # after an agent restart: adopt the same run
    await sup.control(command)                    # append to the run's control.jsonl
    await sup.cancel()                            # SIGTERM the process group, SIGKILL after grace
    outcome = await sup.wait()                    # exit status, result file, checkpoint paths
    await sup.close()                             # stop following; the remote run goes on

From ``start``/``attach`` until ``wait`` returns (or ``close``), one background task follows the
run: the metrics JSONL file is read at byte offsets and its points handed to the agent's
``MetricsReporter`` with ``(source, seq = line number)``, so a line read twice is one point for
ingest; the position is saved in the local state folder once the reporter holds the points
durably (``tailer.take_lines``/``save_tail_state``, the same code as the local tailer). The
command's output (``on_output``) and the stage's events (``on_event``: CheckpointSaved,
ActionApplied, ActionRefused, as a local stage process writes them) are followed the same way.

When the connection drops, the remote run goes on (see ``ssh_remote``) and the follower
reconnects and carries on from where it was; a new supervisor built on the same state folder
``attach``-es and carries on from the saved positions. Nothing held only in memory is needed.

Errors: ``SshError`` (its message names the host or the secret, never a key), ``HostKeyRefused``
for a host key known_hosts does not vouch for. A lost connection is retried for
``SshOptions.give_up_after_s``; refused host keys and credentials are not.

The agent's ``SshSupervisor`` (``supervisors/ssh.py``) keeps one ``SshRunner`` per launch of a
``run_mode: ssh`` stage and runs the stage process itself (``stage_process``) on the remote
host with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import shlex
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import orjson

from posttrain.events.tasks import SshConfig
from posttrain.trainer_agent.core.reports import checkpoint_path
from posttrain.trainer_agent.metrics_file import metrics_file_path
from posttrain.trainer_agent.reporting import MetricsReporter
from posttrain.trainer_agent.stage_files import CONTROL, EVENTS, read_json, write_json_atomic
from posttrain.trainer_agent.supervisors import ssh_remote
from posttrain.trainer_agent.supervisors.ssh_connect import HostKeyRefused, SshError, connect
from posttrain.trainer_agent.tailer import (
    TailState,
    load_tail_state,
    save_tail_state,
    take_lines,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# The environment a remote command gets besides ssh_config.env and the launch's own.
ENV_RUN_DIR = "POSTTRAIN_RUN_DIR"
ENV_METRICS_DIR = "POSTTRAIN_METRICS_DIR"
ENV_METRICS_FILE = "POSTTRAIN_METRICS_FILE"
ENV_CONTROL_FILE = "POSTTRAIN_CONTROL_FILE"

_RUN_RECORD = "ssh-run.json"
_METRICS_STATE = "ssh-metrics.offset"
_FOLLOW_STATE = "ssh-follow.json"
_READ_BYTES = 4 * 1024 * 1024
_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


@dataclass(frozen=True, slots=True)
class RemoteLaunch:
    """What to run remotely: ``argv`` in ``cwd`` (default: the run folder) with ``env``.

    ``name`` names the run folder under ``ssh_config.remote_dir`` (one per launch, e.g.
    ``<command_id>-<launch>``); ``files`` are written into it before the start (a stage spec);
    ``metrics_file`` is the JSONL file followed (relative to the run folder; by default
    ``<job_id>_metrics.jsonl``, where ``create_metrics_file_writer(job_id,
    os.environ["POSTTRAIN_METRICS_DIR"])`` writes); ``result_file`` is read at the end."""

    name: str
    job_id: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    files: Mapping[str, bytes] = field(default_factory=dict)
    metrics_file: str | None = None
    result_file: str | None = "result.json"

    @classmethod
    def python_module(
        cls,
        name: str,
        job_id: str,
        module: str,
        args: Sequence[str] = (),
        *,
        python: str = "python3",
        **kwargs: Any,
    ) -> RemoteLaunch:
        """A Python task entry: ``python -m module args...`` on the remote host."""
        return cls(name, job_id, [python, "-m", module, *args], **kwargs)


@dataclass(frozen=True, slots=True)
class RemoteRun:
    """The handle of a started run: all an agent needs to find it again (JSON-able)."""

    run_dir: str
    pid: int
    start: int  # the wrapper's start time, clock ticks since boot: tells a reused pid apart
    metrics_file: str
    result_file: str | None

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RemoteRun:
        return cls(
            run_dir=str(record["run_dir"]),
            pid=int(record["pid"]),
            start=int(record["start"]),
            metrics_file=str(record["metrics_file"]),
            result_file=record.get("result_file"),
        )


@dataclass(frozen=True, slots=True)
class RemoteOutcome:
    """How the run ended. ``exit_code`` None: it ended without a status (killed with SIGKILL,
    or the host restarted). ``checkpoints``: remote paths from the stage's CheckpointSaved."""

    exit_code: int | None
    result: Mapping[str, Any] | None
    checkpoints: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SshOptions:
    poll_s: float = 0.1  # metrics, output and events files
    status_s: float = 1.0  # whether the process still runs (one remote command)
    durable_timeout_s: float = 30.0
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 10.0
    give_up_after_s: float = 600.0  # without a connection, the supervisor fails
    cancel_grace_s: float = 20.0


class SshRunner:
    """Runs and follows one remote run; see the module's docstring for the operations."""

    def __init__(
        self,
        config: SshConfig,
        state_dir: str | Path,
        reporter: MetricsReporter,
        *,
        on_output: Callable[[bytes], None] | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        options: SshOptions | None = None,
    ) -> None:
        self.config = config
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.reporter = reporter
        self.on_output = on_output
        self.on_event = on_event
        self.options = options or SshOptions()
        self.run: RemoteRun | None = None
        self.reconnections = 0
        self._conn: asyncssh.SSHClientConnection | None = None
        self._connected_before = False
        self._sftp: asyncssh.SFTPClient | None = None
        self._lock = asyncio.Lock()
        self._follower: asyncio.Task[RemoteOutcome] | None = None
        self._metrics = load_tail_state(self.state_dir / _METRICS_STATE)
        follow = _json_object(self.state_dir / _FOLLOW_STATE) or {}
        self._output_offset = int(follow.get("output", 0))
        self._events_offset = int(follow.get("events", 0))
        self._checkpoints: list[str] = list(follow.get("checkpoints", []))

    # --- operations -----------------------------------------------------------------------

    async def start(self, launch: RemoteLaunch) -> RemoteRun:
        """Start the launch detached on the remote host and begin following it."""
        for name in (launch.name, *launch.files):
            if not _NAME.match(name) or name.startswith("."):
                raise ValueError(f"{name!r}: a file name of letters, digits and '_.:-' only")
        run_dir = f"{self.config.remote_dir.rstrip('/')}/{launch.name}"
        metrics = f"{run_dir}/{launch.metrics_file or metrics_file_path('.', launch.job_id).name}"
        env = {
            **self.config.env,
            **launch.env,
            ENV_RUN_DIR: run_dir,
            ENV_METRICS_DIR: run_dir,
            ENV_METRICS_FILE: metrics,
            ENV_CONTROL_FILE: f"{run_dir}/{CONTROL}",
        }
        try:
            pid, start = await self._start_remote(launch, run_dir, env)
        except (asyncssh.Error, OSError) as exc:
            self._drop_connection()
            raise SshError(f"could not start the run on {self._where()}: {exc}") from None
        result_file = f"{run_dir}/{launch.result_file}" if launch.result_file else None
        self.run = RemoteRun(run_dir, pid, start, metrics, result_file)
        write_json_atomic(self.state_dir / _RUN_RECORD, self.run.to_record())
        log.info("ssh: started", extra={"host": self.config.host, "run_dir": run_dir, "pid": pid})
        self._follower = asyncio.create_task(self._follow(), name=f"ssh-follow-{launch.name}")
        return self.run

    async def _start_remote(
        self, launch: RemoteLaunch, run_dir: str, env: Mapping[str, str]
    ) -> tuple[int, int]:
        conn = await self._connection()
        if launch.files:
            await conn.run(f"mkdir -p {_q(run_dir)}", check=True)
            sftp = await self._sftp_client()
            for name, data in launch.files.items():
                async with sftp.open(f"{run_dir}/{name}", "wb") as fh:
                    await fh.write(data)
        script = ssh_remote.start_script(run_dir, launch.argv, env, launch.cwd)
        done = await conn.run(script)
        if done.exit_status != 0:
            raise SshError(
                f"could not start the run on {self._where()}: {str(done.stderr).strip()}"
            )
        pid, start = (int(x) for x in str(done.stdout).split())
        return pid, start

    async def attach(self, record: Mapping[str, Any] | None = None) -> RemoteRun:
        """Adopt a run started earlier (by this agent before a restart): from ``record`` or
        the state folder's; follows it from the saved positions, or reports how it ended."""
        if record is None:
            record = _json_object(self.state_dir / _RUN_RECORD)
            if record is None:
                raise SshError(f"no remote run recorded in {self.state_dir}")
        self.run = RemoteRun.from_record(record)
        self._follower = asyncio.create_task(self._follow(), name="ssh-follow")
        return self.run

    async def control(self, command: Mapping[str, Any]) -> None:
        """Append one control command to the run's control file, where the stage reads it at
        its next step boundary. Sending one again is harmless: the stage skips an action id
        it has seen."""
        await self.append_control(orjson.dumps(dict(command)) + b"\n")

    async def append_control(self, lines: bytes) -> None:
        """Append whole control lines, as they are, to the run's control file."""
        run = self._require_run()
        script = ssh_remote.append_script(f"{run.run_dir}/{CONTROL}")
        await self._with_reconnect(functools.partial(self._remote, script, lines.decode()))

    async def signal(self, signal: str) -> None:
        """Send ``TERM`` or ``KILL`` to the run's whole process group (nothing if it ended)."""
        run = self._require_run()
        script = ssh_remote.signal_script(run.pid, run.start, signal)
        await self._with_reconnect(functools.partial(self._remote, script))

    async def cancel(self, grace_s: float | None = None) -> None:
        """SIGTERM the run's process group; SIGKILL what is left after ``grace_s``."""
        grace = self.options.cancel_grace_s if grace_s is None else grace_s
        await self.signal("TERM")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while loop.time() < deadline:
            if await self._with_reconnect(self._group_size) == 0:
                return
            await asyncio.sleep(0.1)
        await self.signal("KILL")

    async def wait(self) -> RemoteOutcome:
        """Follow the run until it ends and every metric line is read; its outcome."""
        if self._follower is None:
            raise SshError("nothing started or attached")
        return await asyncio.shield(self._follower)

    async def close(self) -> None:
        """Stop following (the agent stops or hands over); the remote run goes on."""
        follower = self._follower
        self.abandon()
        if follower is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await follower

    def abandon(self) -> None:
        """``close`` without waiting: the follower is cancelled, the connection dropped."""
        if self._follower is not None and not self._follower.done():
            self._follower.cancel()
        self._drop_connection()

    @property
    def ended(self) -> bool:
        """Whether following is over: the run ended and everything it wrote is read (``wait``
        returns at once), or the supervisor gave up on the host (``wait`` raises why)."""
        return self._follower is not None and self._follower.done()

    # --- following ------------------------------------------------------------------------

    async def _follow(self) -> RemoteOutcome:
        loop = asyncio.get_running_loop()
        next_status = 0.0
        ended: str | None = None
        while True:
            if ended is None and loop.time() >= next_status:
                status = await self._with_reconnect(self._status)
                ended = None if status == "running" else status
                next_status = loop.time() + self.options.status_s
            read = await self._with_reconnect(self._pump)
            if ended is not None and not read:
                # Ended, and a read after the end found nothing more: everything is in.
                if await self._with_reconnect(self._pump):
                    continue
                return await self._with_reconnect(functools.partial(self._outcome, ended))
            if not read:
                await asyncio.sleep(self.options.poll_s)

    async def _pump(self) -> bool:
        """Read what the metrics, output and events files gained; True if anything."""
        run = self._require_run()
        sftp = await self._sftp_client()
        got = await self._pump_metrics(sftp, run)
        chunk = await _read_new(sftp, f"{run.run_dir}/{ssh_remote.LOG}", self._output_offset)
        if chunk:
            if self.on_output is not None:
                self.on_output(chunk)
            self._output_offset += len(chunk)
        lines = await _read_new(sftp, f"{run.run_dir}/{EVENTS}", self._events_offset)
        end = lines.rfind(b"\n") + 1
        for line in lines[:end].splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    if (path := checkpoint_path(event)) is not None:
                        self._checkpoints.append(path)
                    if self.on_event is not None:
                        self.on_event(event)
        self._events_offset += end
        if chunk or end:
            write_json_atomic(
                self.state_dir / _FOLLOW_STATE,
                {
                    "output": self._output_offset,
                    "events": self._events_offset,
                    "checkpoints": self._checkpoints,
                },
            )
        return got or bool(chunk) or end > 0

    async def _pump_metrics(self, sftp: asyncssh.SFTPClient, run: RemoteRun) -> bool:
        size = await _size(sftp, run.metrics_file)
        state = self._metrics
        if size < state.offset:  # truncated or replaced: a new generation of lines
            state = self._metrics = TailState(generation=state.generation + 1)
        if size == state.offset:
            return False
        chunk = await _read_from(sftp, run.metrics_file, state.offset, size - state.offset)
        points, _ = take_lines(state, chunk)
        for p in points:
            self.reporter.submit(p.source, p.seq, p.point)
        if points:
            durable = await asyncio.to_thread(
                self.reporter.wait_durable, self.options.durable_timeout_s
            )
            if durable:
                save_tail_state(self.state_dir / _METRICS_STATE, state)
        return bool(points)

    async def _status(self) -> str:
        """``exit <status>``, ``running`` or ``gone``, read over SFTP (no remote process to
        spawn, so the metrics poll is not held up): the exit file, else /proc/<pid>/stat."""
        run = self._require_run()
        sftp = await self._sftp_client()
        exit_file = f"{run.run_dir}/{ssh_remote.EXIT}"
        for _ in range(2):  # again after the process check: it may have ended in between
            status = (await _read_from(sftp, exit_file, 0, 64)).strip()
            if status:
                return f"exit {status.decode()}"
            stat = await _read_from(sftp, f"/proc/{run.pid}/stat", 0, 4096)
            fields = stat[stat.rfind(b")") + 2 :].split()
            if len(fields) > 19 and fields[0] not in (b"Z", b"X") and int(fields[19]) == run.start:
                return "running"
        return "gone"

    async def _outcome(self, status: str) -> RemoteOutcome:
        run = self._require_run()
        exit_code = int(status.split()[1]) if status.startswith("exit ") else None
        result: Mapping[str, Any] | None = None
        if run.result_file:
            sftp = await self._sftp_client()
            with contextlib.suppress(asyncssh.SFTPNoSuchFile, ValueError):
                data = await _read_new(sftp, run.result_file, 0)
                doc = json.loads(data) if data else None
                result = doc if isinstance(doc, dict) else None
        log.info("ssh: ended", extra={"run_dir": run.run_dir, "exit_code": exit_code})
        return RemoteOutcome(exit_code, result, tuple(self._checkpoints))

    async def _group_size(self) -> int:
        run = self._require_run()
        return int(await self._remote(ssh_remote.group_alive_script(run.pid)))

    # --- the connection -------------------------------------------------------------------

    async def _with_reconnect(self, step: Callable[[], Awaitable[T]]) -> T:
        """Run ``step``; when the connection is lost or the host cannot be reached, reconnect
        (with backoff) and run it again, for ``give_up_after_s`` at most. A refused host key,
        refused credentials or a missing secret (``SshError``) are not retried."""
        loop = asyncio.get_running_loop()
        wait = self.options.reconnect_min_s
        lost_since: float | None = None
        while True:
            try:
                return await step()
            except (asyncssh.Error, OSError) as exc:
                self._drop_connection()
                now = loop.time()
                lost_since = lost_since if lost_since is not None else now
                if now - lost_since > self.options.give_up_after_s:
                    raise SshError(
                        f"lost {self._where()} for {self.options.give_up_after_s:.0f} s: "
                        f"{type(exc).__name__}"
                    ) from None
                log.warning(
                    "ssh: connection lost, reconnecting",
                    extra={"host": self.config.host, "error": type(exc).__name__},
                )
                await asyncio.sleep(wait)
                wait = min(wait * 2, self.options.reconnect_max_s)

    async def _connection(self) -> asyncssh.SSHClientConnection:
        async with self._lock:
            if self._conn is None:
                self._conn = await connect(self.config)
                self.reconnections += self._connected_before
                self._connected_before = True
            return self._conn

    async def _sftp_client(self) -> asyncssh.SFTPClient:
        conn = await self._connection()
        if self._sftp is None:
            self._sftp = await conn.start_sftp_client()
        return self._sftp

    async def _remote(self, script: str, input: str | None = None) -> str:
        conn = await self._connection()
        done = await conn.run(script, input=input)
        if done.exit_status != 0:
            raise SshError(f"remote command failed on {self._where()}: {str(done.stderr).strip()}")
        return str(done.stdout).strip()

    def _drop_connection(self) -> None:
        if self._sftp is not None:
            self._sftp.exit()
            self._sftp = None
        if self._conn is not None:
            self._conn.abort()
            self._conn = None

    def _require_run(self) -> RemoteRun:
        if self.run is None:
            raise SshError("nothing started or attached")
        return self.run

    def _where(self) -> str:
        return f"{self.config.user}@{self.config.host}:{self.config.port}"


async def _read_from(sftp: asyncssh.SFTPClient, path: str, offset: int, size: int) -> bytes:
    """Up to ``size`` bytes of a remote file from ``offset`` (nothing if it does not exist)."""
    try:
        async with sftp.open(path, "rb") as fh:
            data = await fh.read(min(size, _READ_BYTES), offset)
    except asyncssh.SFTPNoSuchFile:
        return b""
    return data if isinstance(data, bytes) else data.encode()


async def _size(sftp: asyncssh.SFTPClient, path: str) -> int:
    try:
        return (await sftp.stat(path)).size or 0
    except asyncssh.SFTPNoSuchFile:
        return 0


async def _read_new(sftp: asyncssh.SFTPClient, path: str, offset: int) -> bytes:
    """What a remote file gained past ``offset`` (a stat, then one read of just that)."""
    size = await _size(sftp, path)
    return await _read_from(sftp, path, offset, size - offset) if size > offset else b""


def _q(text: str) -> str:
    return shlex.quote(text)


def _json_object(path: Path) -> dict[str, Any] | None:
    doc = read_json(path)
    return doc if isinstance(doc, dict) else None


__all__ = [
    "HostKeyRefused",
    "RemoteLaunch",
    "RemoteOutcome",
    "RemoteRun",
    "SshError",
    "SshOptions",
    "SshRunner",
]
