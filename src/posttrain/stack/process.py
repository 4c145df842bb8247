"""Process and port helpers: pid files, liveness, TCP probes, detached starts, stopping."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if something accepts TCP connections there."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie.

    A stopped process whose parent never reaps it (our own child in a long-lived Python
    process, or an orphan under an init that does not reap) stays a zombie: it holds no port
    and no file, so it counts as gone."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    # The state follows the parenthesised command name, which may itself contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def write_pid(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(path)


def spawn_detached(argv: Sequence[str], log: Path, cwd: Path) -> int:
    """Start a long-running server in its own session, output appended to ``log``.

    Its own session: a Ctrl-C in the terminal that ran `posttrain stack up`, or the end of a
    test run's process group, must not take the server down with it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    return proc.pid


def terminate(pid: int, timeout: float) -> bool:
    """SIGTERM the process (and its process group when it leads one), SIGKILL after
    ``timeout``; True once it is gone."""

    def send(sig: signal.Signals) -> None:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

    if not pid_alive(pid):
        return True
    send(signal.SIGTERM)
    if wait_until(lambda: not pid_alive(pid), timeout):
        return True
    send(signal.SIGKILL)
    return wait_until(lambda: not pid_alive(pid), 10.0)


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, or a note that there is none."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialise `stack up`/`down` between processes (two terminals, make test and a user)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run(
    argv: Sequence[str],
    *,
    user: str | None = None,
    timeout: float = 120.0,
    new_session: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run a short command, as ``user`` via runuser when given, capturing its output.

    ``new_session``: for commands that leave a daemon behind (pg_ctl start), so that the daemon
    does not share our session and process group."""
    full = ["runuser", "-u", user, "--", *argv] if user else list(argv)
    return subprocess.run(
        full,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        start_new_session=new_session,
    )


def find_pids(match: Callable[[list[str]], bool]) -> list[int]:
    """Live processes whose command line satisfies ``match``: finds our servers even when a
    pid file was lost, so that `down` never leaves one behind."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid != os.getpid() and match(cmdline(pid)) and pid_alive(pid):
            found.append(pid)
    return sorted(found)
