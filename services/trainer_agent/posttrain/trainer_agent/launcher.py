"""Starting stage processes, and recognising them later.

A stage process is its own session (``setsid``): the agent can signal its whole process group,
and killing the agent does not kill it, so that a restarted agent re-attaches to it. A process
is identified by (pid, start time), so a pid reused by the system is never taken for a stage.

Two launchers:

- ``ZygoteLauncher`` (default): a helper process imports torch, transformers and TRL once and
  forks each stage from there, so a stage starts in milliseconds instead of the 10-30 s those
  imports take. The helper exits when the agent does (its stdin closes).
- ``SpawnLauncher``: a fresh interpreter per stage (``--no-zygote``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from posttrain.trainer_agent.stage_files import LOG

ZYGOTE_READY_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class ProcessId:
    pid: int
    start: int  # start time in clock ticks since boot (/proc/<pid>/stat field 22)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    return raw[raw.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def is_alive(process: ProcessId) -> bool:
    """True while that very process runs (not a zombie, not a reused pid)."""
    fields = _stat_fields(process.pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return process.start == 0 or int(fields[19]) == process.start


def signal_group(process: ProcessId, sig: int) -> None:
    """Signal the stage's process group (the stage and anything it started)."""
    if is_alive(process):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)


class Launcher(Protocol):
    def launch(
        self, attempt_dir: Path, launch: int, env: Mapping[str, str], cwd: str
    ) -> ProcessId: ...

    def reap(self) -> None: ...

    def close(self) -> None: ...


class SpawnLauncher:
    def __init__(self) -> None:
        self._children: list[subprocess.Popen[bytes]] = []

    def launch(self, attempt_dir: Path, launch: int, env: Mapping[str, str], cwd: str) -> ProcessId:
        with open(attempt_dir / LOG, "ab") as log:
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "posttrain.trainer_agent.stage_process",
                    str(attempt_dir),
                    str(launch),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        self._children.append(child)
        return ProcessId(child.pid, start_time(child.pid) or 0)

    def reap(self) -> None:
        # Our own children must be waited for, or they linger as zombies.
        self._children = [c for c in self._children if c.poll() is None]

    def close(self) -> None:
        self.reap()


class ZygoteLauncher:
    """Forks stages from a process that has the training libraries imported already."""

    def __init__(self, preload: tuple[str, ...] | None = None) -> None:
        self._dir = tempfile.mkdtemp(prefix="posttrain-zygote-")
        self.socket_path = os.path.join(self._dir, "zygote.sock")
        argv = [sys.executable, "-m", "posttrain.trainer_agent.zygote", self.socket_path]
        if preload is not None:
            argv.append(",".join(preload))
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,  # closed when the agent exits: the zygote then exits too
            stdout=subprocess.DEVNULL,
            stderr=None,
            start_new_session=True,
        )
        self._lock = threading.Lock()

    def ready(self, timeout: float = ZYGOTE_READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.socket_path):
            if self._process.poll() is not None:
                code = self._process.returncode
                raise RuntimeError(f"the stage zygote exited with status {code}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the stage zygote was not ready after {timeout}s")
            time.sleep(0.05)

    def launch(self, attempt_dir: Path, launch: int, env: Mapping[str, str], cwd: str) -> ProcessId:
        self.ready()
        request = {
            "attempt_dir": str(attempt_dir),
            "launch": launch,
            "env": dict(env),
            "cwd": cwd,
            "log": str(attempt_dir / LOG),
        }
        with self._lock, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(60)
            conn.connect(self.socket_path)
            conn.sendall(json.dumps(request).encode() + b"\n")
            reply = conn.makefile("rb").readline()
        answer = json.loads(reply)
        if "pid" not in answer:
            raise RuntimeError(f"the stage zygote could not fork: {answer.get('error')}")
        return ProcessId(int(answer["pid"]), int(answer.get("start") or 0))

    def reap(self) -> None:
        pass  # the zygote reaps its own children

    def close(self) -> None:
        if self._process.poll() is None:
            with contextlib.suppress(OSError):
                if self._process.stdin is not None:
                    self._process.stdin.close()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.send_signal(signal.SIGKILL)
                self._process.wait(10)
        # The zygote removes its socket when it exits; whatever is left goes here.
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)
