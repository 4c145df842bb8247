"""A private, throwaway Kafka broker for the one test that must stop a broker mid-run.

The shared broker of `posttrain stack up` is used by every engineer and test at once: it is never
stopped. This one runs from the same jars (fetched by `posttrain stack up`) on free ports with
its data in a temporary directory, and can be stopped and started again on the same ports.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from posttrain.stack.kafka import java_binary
from posttrain.stack.paths import stack_paths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.3):
        return True
    return False


class PrivateBroker:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.controller_port = _free_port()
        self.libs = stack_paths().kafka_libs
        self.java = java_binary()
        self.process: subprocess.Popen[bytes] | None = None
        self.config = workdir / "server.properties"
        self.log = workdir / "kafka.log"
        data = workdir / "data"
        self.config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
                    f"CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={data}",
                    "offsets.topic.replication.factor=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                    "",
                ]
            )
        )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def available(self) -> str | None:
        """Why this broker cannot run here, or None."""
        if self.java is None:
            return "java is not installed"
        if not (self.libs.is_dir() and any(self.libs.glob("kafka_2.13-*.jar"))):
            return f"no Kafka jars in {self.libs}: run `posttrain stack up` once"
        return None

    def _argv(self, *main: str) -> list[str]:
        assert self.java is not None
        return [
            self.java,
            "-Xmx256m",
            "-XX:TieredStopAtLevel=1",  # starts faster; this broker carries a few messages
            "-cp",
            f"{self.libs}/*",
            *main,
        ]

    def format(self) -> None:
        subprocess.run(
            self._argv(
                "kafka.tools.StorageTool",
                "format",
                "-t",
                base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode(),
                "-c",
                str(self.config),
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self, timeout: float = 120.0) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self._argv("kafka.Kafka", str(self.config)),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"private broker exited: see {self.log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"private broker not ready after {timeout}s: see {self.log}")
            time.sleep(0.2)

    def stop(self, timeout: float = 60.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        # The port closes with the process; wait until it really refuses connections.
        while _port_open(self.port):
            time.sleep(0.1)
