"""The local single-node Kafka broker (KRaft, broker and controller in one JVM): fetch its jars
with Maven once, write its configuration, format its storage once, start, probe and stop it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from posttrain.stack import process
from posttrain.stack.component import ComponentStatus, StackError, State, check_not_taken
from posttrain.stack.config import (
    BrokerSecurity,
    KafkaAddress,
    new_cluster_id,
    render_log4j2,
    render_server_properties,
    served_address,
)
from posttrain.stack.paths import KAFKA_VERSION, StackPaths

NAME = "kafka"
POM = Path(__file__).with_name("kafka-pom.xml")
BROKER_JAR = f"kafka_2.13-{KAFKA_VERSION}.jar"
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0
FETCH_TIMEOUT_S = 900.0
# The log is appended to across restarts; past this size the previous one is set aside.
LOG_ROTATE_BYTES = 20 * 1024 * 1024


def java_binary() -> str | None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    return shutil.which("java")


def jars_present(paths: StackPaths) -> bool:
    return paths.kafka_fetched_marker.exists() and (paths.kafka_libs / BROKER_JAR).exists()


def fetch(paths: StackPaths) -> bool:
    """Fetch the broker's jars with Maven unless a previous fetch completed; True if fetched.

    The jars land in a scratch directory first and the marker is written last, so an interrupted
    fetch is redone rather than trusted."""
    if jars_present(paths):
        return False
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(NAME, "Maven (mvn) is not installed; install it: apt-get install maven")
    paths.kafka_dist.mkdir(parents=True, exist_ok=True)
    pom = paths.kafka_dist / "pom.xml"
    shutil.copyfile(POM, pom)
    partial = paths.kafka_dist / "libs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    result = process.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}",
            "-DincludeScope=runtime",
        ],
        timeout=FETCH_TIMEOUT_S,
    )
    if result.returncode != 0 or not (partial / BROKER_JAR).exists():
        output = (result.stdout + result.stderr).strip()[-3000:]
        raise StackError(NAME, f"fetching Kafka {KAFKA_VERSION} with Maven failed:\n{output}")
    shutil.rmtree(paths.kafka_libs, ignore_errors=True)
    partial.rename(paths.kafka_libs)
    paths.kafka_fetched_marker.write_text(f"kafka_2.13 {KAFKA_VERSION}\n")
    return True


def cluster_id(paths: StackPaths) -> str:
    """The cluster id the data dir was (or will be) formatted with; kept so the dir is reused."""
    if paths.kafka_cluster_id.exists():
        return paths.kafka_cluster_id.read_text().strip()
    value = new_cluster_id()
    paths.kafka_cluster_id.parent.mkdir(parents=True, exist_ok=True)
    paths.kafka_cluster_id.write_text(value + "\n")
    return value


def write_config(
    paths: StackPaths, address: KafkaAddress, security: BrokerSecurity | None = None
) -> None:
    paths.kafka_config_dir.mkdir(parents=True, exist_ok=True)
    text = render_server_properties(address, paths.kafka_data, security)
    # A secured broker's configuration holds passwords: readable by its owner alone.
    fd = os.open(paths.kafka_server_properties, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    paths.kafka_server_properties.chmod(0o600)
    paths.kafka_log4j2.write_text(render_log4j2(paths.kafka_log))


# What Kafka's own start scripts give the broker (kafka-server-start.sh's heap and
# kafka-run-class.sh's performance options): a fixed heap, and G1 aiming at 20 ms pauses that
# starts marking early. With a 512 MB heap that grew on demand, a broker that had loaded a few
# days of transaction and group state (376 MB live) ran G1's concurrent marking every 3 s and
# young collections of ~10 ms each second under the fleet benchmark's load.
BROKER_JVM_OPTIONS = (
    "-Xms1g",
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)
TOOL_JVM_OPTIONS = ("-Xmx256m",)


def _java_argv(
    paths: StackPaths, java: str, *main: str, options: tuple[str, ...] = TOOL_JVM_OPTIONS
) -> list[str]:
    return [
        java,
        *options,
        f"-Dlog4j2.configurationFile={paths.kafka_log4j2}",
        "-cp",
        f"{paths.kafka_libs}/*",  # expanded by java itself, not by a shell
        *main,
    ]


def format_storage(paths: StackPaths, java: str) -> None:
    """Format the KRaft storage once; an existing meta.properties means it already was."""
    if (paths.kafka_data / "meta.properties").exists():
        return
    paths.kafka_data.mkdir(parents=True, exist_ok=True)
    result = process.run(
        _java_argv(
            paths,
            java,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id(paths),
            "-c",
            str(paths.kafka_server_properties),
            "--ignore-formatted",
        ),
        timeout=120,
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-3000:]
        raise StackError(NAME, f"formatting {paths.kafka_data} failed:\n{output}", paths.kafka_log)


def _is_our_broker(paths: StackPaths, argv: list[str]) -> bool:
    return "kafka.Kafka" in argv and str(paths.kafka_server_properties) in argv


def our_pid(paths: StackPaths) -> int | None:
    """The broker this stack started: from the pid file, or found by its command line if the
    pid file was lost. A pid file naming some other process (pid reuse) does not count."""
    pid = process.read_pid(paths.kafka_pid)
    if pid is not None and process.pid_alive(pid) and _is_our_broker(paths, process.cmdline(pid)):
        return pid
    found = process.find_pids(lambda argv: _is_our_broker(paths, argv))
    return found[0] if found else None


def _serving_at(paths: StackPaths) -> KafkaAddress | None:
    # server.properties is rewritten only when the broker is (re)started, so it says where the
    # running one listens.
    try:
        return served_address(paths.kafka_server_properties.read_text())
    except OSError:
        return None


def status(paths: StackPaths, address: KafkaAddress) -> ComponentStatus:
    pid = our_pid(paths)
    if pid is not None:
        serving = _serving_at(paths)
        if serving is not None and serving != address:
            # Something else may answer on the asked-for port: it is not ours.
            return ComponentStatus(
                NAME,
                State.ELSEWHERE,
                str(address),
                pid,
                paths.kafka_data,
                paths.kafka_log,
                serving_at=str(serving),
            )
    answers = process.port_open(address.host, address.port, timeout=0.5)
    if pid is not None:
        state = State.RUNNING if answers else State.STARTING
    else:
        state = State.FOREIGN if answers else State.STOPPED
    return ComponentStatus(NAME, state, str(address), pid, paths.kafka_data, paths.kafka_log)


def _rotate_log(log: Path) -> None:
    if log.exists() and log.stat().st_size > LOG_ROTATE_BYTES:
        log.replace(log.with_name(log.name + ".1"))


def start(
    paths: StackPaths, address: KafkaAddress, security: BrokerSecurity | None = None
) -> tuple[str, ComponentStatus]:
    """Bring the broker up unless it already is; (what was done, status). ``security``: a
    broker that requires SASL over TLS (``posttrain.stack.secure``)."""
    current = status(paths, address)
    if current.state is State.RUNNING:
        return "already running", current
    check_not_taken(current, server="broker", variable="KAFKA_BOOTSTRAP_SERVERS")
    if current.state is State.STARTING and current.pid is not None:
        # Another `stack up` started it a moment ago, or it is slow: wait for it, do not fork a
        # second broker on the same data dir.
        _wait_ready(paths, address, current.pid)
        return "was starting, now running", status(paths, address)
    if process.port_open(address.host, address.controller_port, timeout=0.5):
        raise StackError(
            NAME,
            f"controller port {address.host}:{address.controller_port} is in use by another "
            "process; the controller listens on the broker port + 1",
        )
    java = java_binary()
    if java is None:
        raise StackError(
            NAME, "java is not installed; install OpenJDK 17: apt-get install openjdk-17-jre"
        )
    paths.kafka_pid.unlink(missing_ok=True)
    fetch(paths)
    write_config(paths, address, security)
    format_storage(paths, java)
    _rotate_log(paths.kafka_log)
    pid = process.spawn_detached(
        _java_argv(
            paths,
            java,
            "kafka.Kafka",
            str(paths.kafka_server_properties),
            options=BROKER_JVM_OPTIONS,
        ),
        log=paths.kafka_log,
        cwd=paths.home,
    )
    process.write_pid(paths.kafka_pid, pid)
    _wait_ready(paths, address, pid)
    return "started", status(paths, address)


def _wait_ready(paths: StackPaths, address: KafkaAddress, pid: int) -> None:
    """The broker opens its client port only once it is ready: a TCP probe is the readiness
    check. Stop waiting early if the JVM dies."""

    def ready_or_dead() -> bool:
        return process.port_open(address.host, address.port, 0.5) or not process.pid_alive(pid)

    process.wait_until(ready_or_dead, READY_TIMEOUT_S, interval=0.3)
    if process.port_open(address.host, address.port, 0.5):
        return
    if process.pid_alive(pid):
        # Do not leave a half-started broker holding the data dir.
        process.terminate(pid, STOP_TIMEOUT_S)
        why = f"did not open {address} within {READY_TIMEOUT_S:.0f} s; stopped it"
    else:
        why = f"exited before opening {address}"
    paths.kafka_pid.unlink(missing_ok=True)
    raise StackError(NAME, f"the broker (pid {pid}) {why}", paths.kafka_log)


def stop(paths: StackPaths) -> str:
    pid = our_pid(paths)
    if pid is None:
        paths.kafka_pid.unlink(missing_ok=True)
        return "not running"
    # SIGTERM lets the broker shut down cleanly (no log recovery on the next start).
    if not process.terminate(pid, STOP_TIMEOUT_S):
        raise StackError(NAME, f"the broker (pid {pid}) did not exit", paths.kafka_log)
    paths.kafka_pid.unlink(missing_ok=True)
    return f"stopped (pid {pid})"
