"""A throwaway OpenSSH server on 127.0.0.1, standing in for a remote GPU host.

Debian's ``sshd`` runs as root with a configuration, host key and client key made in a temporary
folder (nothing under /etc changes; ``/run/sshd``, its privilege-separation folder, is created if
missing). Shared by the SSH run mode's tests and ``bench.remote_lag``.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"
INSTALL_HINT = (
    "Debian's OpenSSH server is needed ({what}): install it with "
    "`apt-get install -y openssh-server` as root (`make sshd` does it; `make test` runs that)"
)


class SshdMissing(RuntimeError):
    """No usable sshd here; the message says how to install it."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
    )


class TestSshd:
    """``start()`` an sshd on a free port; ``known_hosts`` and ``client_key`` let a client in."""

    __test__ = False  # not a pytest class

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.user = getpass.getuser()
        self.host_key = folder / "host_ed25519"
        self.client_key = folder / "client_ed25519"
        self.known_hosts = folder / "known_hosts"
        self.config = folder / "sshd_config"
        self.pid_file = folder / "sshd.pid"
        self.log = folder / "sshd.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> TestSshd:
        if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None:
            raise SshdMissing(INSTALL_HINT.format(what=f"{SSHD} not found"))
        if os.geteuid() != 0:
            raise SshdMissing(INSTALL_HINT.format(what="sshd must run as root here"))
        self.folder.mkdir(parents=True, exist_ok=True)
        _keygen(self.host_key, "posttrain-test-host")
        _keygen(self.client_key, "posttrain-test-client")
        authorized = self.folder / "authorized_keys"
        authorized.write_text((self.folder / "client_ed25519.pub").read_text())
        host_pub = (self.folder / "host_ed25519.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.pid_file}",
                    f"AuthorizedKeysFile {authorized}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "StrictModes no",
                    "UsePAM no",
                    "Subsystem sftp internal-sftp",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise SshdMissing(f"sshd exited: {self.log.read_text()[-2000:]}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return self
            time.sleep(0.05)
        raise SshdMissing(f"sshd did not listen on {self.port} within {timeout_s} s")

    def sessions(self) -> list[int]:
        """The pids of sshd's per-connection children (killing them drops the connections)."""
        if self._proc is None:
            return []
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self._proc.pid)],
            capture_output=True,
            text=True,
            check=False,
        )
        return [int(p) for p in out.stdout.split()]

    def drop_connections(self) -> int:
        """Kill every open connection's sshd process, as a network failure would; how many."""
        pids = self.sessions()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def stop(self) -> None:
        if self._proc is not None:
            self.drop_connections()
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
            self._proc = None

    def __enter__(self) -> TestSshd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
