"""The secured broker of these tests: ``posttrain stack up --secure kafka`` with a state
directory of its own on free ports, never the shared plaintext stack."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from posttrain.events.kafka import KafkaSettings
from posttrain.events.kafka.settings import KafkaEnvironment
from posttrain.stack import secure
from posttrain.stack.paths import StackSettings

POSTTRAIN = str(Path(sys.executable).parent / "posttrain")
UP_TIMEOUT_S = 240.0


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port_pair() -> int:
    """A loopback port whose next port is free too (the controller listens on port + 1), both
    below the ephemeral range: there, any client's outgoing connection may take the second one
    before the broker binds it."""
    low, _ = _ephemeral_range()
    while True:
        port = random.randrange(10000, low - 2)
        try:
            for candidate in (port, port + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


@dataclass
class SecureBroker:
    state_dir: Path
    port: int
    namespace: str

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "POSTTRAIN_STACK_DIR": str(self.state_dir),
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{self.port}",
            "POSTTRAIN_TOPIC_NAMESPACE": self.namespace,
        }

    @property
    def stack(self) -> StackSettings:
        """Where the broker's state is, as ``env`` says to the commands."""
        return StackSettings(stack_dir=self.state_dir)

    def _stack(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTTRAIN, "stack", *args, "--secure", "kafka"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=UP_TIMEOUT_S,
        )

    def up(self, attempts: int = 3) -> str:
        """Start it; on free ports taken by someone else in the meantime (the machine is
        shared), again on others."""
        for _ in range(attempts - 1):
            done = self._stack("up")
            if done.returncode == 0:
                return done.stdout
            log = secure.secure_layout(self.stack).paths.kafka_log
            if "Address already in use" not in log.read_text(errors="replace"):
                break
            self.down()
            self.port = free_port_pair()
        done = self._stack("up")
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def down(self) -> None:
        self._stack("down")

    def settings(self, principal: str) -> KafkaSettings:
        """How ``principal`` connects (its password from its file, the local CA)."""
        layout = secure.secure_layout(self.stack)
        address = secure.secure_address(
            KafkaEnvironment(bootstrap_servers=f"127.0.0.1:{self.port}")
        )
        return secure.principal_settings(layout, address, principal, self.namespace)
