"""``posttrain doctor``: is this machine ready to run posttrain? Checks Java, the Kafka jars, the
broker, the declared topics, PostgreSQL and the migrations; for every problem it prints what is
wrong and the command that fixes it. Exit 1 if anything is wrong.

Every network check uses short timeouts so that a stopped server is reported in seconds.
"""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass

from posttrain.service.settings import database_url
from posttrain.stack import kafka, process
from posttrain.stack.config import kafka_address
from posttrain.stack.paths import KAFKA_VERSION, stack_paths

FIX_STACK = "posttrain stack up"
CONNECT_TIMEOUT_S = 2.0
ADMIN_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class Finding:
    ok: bool
    what: str
    fix: str = ""


def _ok(what: str) -> Finding:
    return Finding(True, what)


def _problem(what: str, fix: str) -> Finding:
    return Finding(False, what, fix)


def check_java() -> Finding:
    java = kafka.java_binary()
    if java is None:
        return _problem("java is not installed", "apt-get install openjdk-17-jre-headless")
    try:
        result = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return _problem(f"`{java} -version` failed: {exc}", "apt-get install openjdk-17-jre")
    # java -version prints to stderr.
    first = (result.stderr or result.stdout).strip().splitlines()[:1]
    if result.returncode != 0 or not first:
        return _problem(f"`{java} -version` exited {result.returncode}", "reinstall OpenJDK 17")
    return _ok(f"java: {first[0]}")


def check_kafka_jars() -> Finding:
    paths = stack_paths()
    if kafka.jars_present(paths):
        return _ok(f"Kafka {KAFKA_VERSION} jars in {paths.kafka_libs}")
    return _problem(f"Kafka {KAFKA_VERSION} jars are not fetched ({paths.kafka_libs})", FIX_STACK)


def check_broker() -> Finding:
    address = kafka_address()
    if process.port_open(address.host, address.port, timeout=CONNECT_TIMEOUT_S):
        return _ok(f"Kafka broker reachable at {address}")
    return _problem(f"Kafka broker at {address} is not reachable", FIX_STACK)


def check_topics() -> list[Finding]:
    try:
        from posttrain.events.kafka.admin import check_topics as broker_topic_problems
        from posttrain.events.kafka.settings import KafkaSettings
        from posttrain.events.topics import TOPICS
    except ImportError as exc:
        return [_problem(f"cannot import posttrain.events.kafka: {exc}", "make install")]
    settings = KafkaSettings.from_env()
    try:
        problems = asyncio.run(
            asyncio.wait_for(broker_topic_problems(settings), timeout=ADMIN_TIMEOUT_S)
        )
    except Exception as exc:  # any client failure is a finding, not a crash of the doctor
        return [_problem(f"cannot list topics on {settings.bootstrap_servers}: {exc!r}", FIX_STACK)]
    if not problems:
        return [_ok(f"all {len(TOPICS)} declared topics present with their partitions and configs")]
    findings = []
    for problem in problems:
        if problem.problem == "missing":
            findings.append(_problem(f"topic {problem.topic} is missing", FIX_STACK))
        else:
            # ensure_topics never alters an existing topic: the drift is fixed by hand.
            findings.append(
                _problem(
                    f"topic {problem.topic} {problem.problem}",
                    _drift_fix(problem.topic, problem.problem, settings.bootstrap_servers),
                )
            )
    return findings


def _drift_fix(topic: str, problem: str, bootstrap: str) -> str:
    libs = stack_paths().kafka_libs
    java = f"java -cp '{libs}/*'"
    if "partitions" in problem:
        return (
            f"{java} kafka.admin.TopicCommand --bootstrap-server {bootstrap} --delete "
            f"--topic {topic} && {FIX_STACK}  (deletes its data; partitions can only grow: "
            f"TopicCommand --alter --partitions N)"
        )
    key, _, rest = problem.partition("=")
    declared = rest.rsplit("declared ", 1)[-1]
    return (
        f"{java} kafka.admin.ConfigCommand --bootstrap-server {bootstrap} --alter "
        f"--entity-type topics --entity-name {topic} --add-config {key}={declared}"
    )


async def _database_findings(dsn: str) -> list[Finding]:
    import asyncpg

    from posttrain.service.migrate import pending_migrations

    try:
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return [_problem(f"PostgreSQL at {_redact(dsn)} is not reachable: {exc}", FIX_STACK)]
    try:
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    findings = [_ok(f"PostgreSQL {version} reachable at {_redact(dsn)}")]
    pending = await pending_migrations(dsn)
    if pending:
        findings.append(_problem(f"pending migrations: {', '.join(pending)}", FIX_STACK))
    else:
        findings.append(_ok("no pending migrations"))
    return findings


def _redact(dsn: str) -> str:
    """The DSN without its password, for printing."""
    head, at, tail = dsn.rpartition("@")
    if not at or ":" not in head.split("://", 1)[-1]:
        return dsn
    scheme, _, userinfo = head.partition("://")
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{tail}"


def check_database() -> list[Finding]:
    dsn = database_url()
    try:
        return asyncio.run(_database_findings(dsn))
    except Exception as exc:  # a broken database is a finding, not a crash of the doctor
        return [_problem(f"PostgreSQL check failed: {exc!r}", FIX_STACK)]


def findings() -> list[Finding]:
    found = [check_java(), check_kafka_jars()]
    broker = check_broker()
    found.append(broker)
    if broker.ok:
        found.extend(check_topics())
    else:
        found.append(_problem("topics not checked: the broker is not reachable", FIX_STACK))
    found.extend(check_database())
    return found


def run_doctor() -> int:
    results = findings()
    for finding in results:
        if finding.ok:
            print(f"OK       {finding.what}")
        else:
            print(f"PROBLEM  {finding.what}")
            print(f"         fix: {finding.fix}")
    problems = sum(not f.ok for f in results)
    print("all good" if problems == 0 else f"{problems} problem(s)")
    return 1 if problems else 0
