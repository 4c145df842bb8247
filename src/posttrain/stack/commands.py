"""``posttrain stack up|down|status``: the local Kafka broker and PostgreSQL server, no Docker.

``up`` is idempotent (a running component is left alone), also creates the declared topics,
the database role and database, and applies pending migrations. ``down`` stops only what ``up``
started and keeps the data. Each returns a process exit code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from posttrain.events.kafka.settings import KafkaSettings
from posttrain.service.settings import database_url
from posttrain.stack import kafka, postgres, process, secure
from posttrain.stack.component import ComponentStatus, StackError, State
from posttrain.stack.config import database_target, kafka_address
from posttrain.stack.paths import StackPaths, stack_paths

COMPONENTS: tuple[str, ...] = (kafka.NAME, postgres.NAME)
# Right after the port opens the broker may still refuse admin requests for a moment.
TOPICS_TIMEOUT_S = 60.0

T = TypeVar("T")

_STOPS: dict[str, Callable[[StackPaths], str]] = {
    kafka.NAME: kafka.stop,
    postgres.NAME: postgres.stop,
}


def _selected(components: Sequence[str] | None) -> list[str]:
    wanted = list(COMPONENTS if components is None else components)
    unknown = [c for c in wanted if c not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown stack components {unknown}; known: {list(COMPONENTS)}")
    return wanted


def _report_failure(error: StackError) -> None:
    print(f"{error.component}: FAILED: {error.message}", file=sys.stderr)
    if error.log is not None:
        print(f"  log: {error.log} (last lines below)", file=sys.stderr)
        for line in process.tail(error.log, 15).splitlines():
            print(f"    {line}", file=sys.stderr)


def _attempt(action: Callable[[], T]) -> T | None:
    """Run one step; on a StackError report it and return None so the other steps still run."""
    try:
        return action()
    except StackError as error:
        _report_failure(error)
        return None


def _started_line(action: str, current: ComponentStatus) -> str:
    return f"{current.name}: {action} at {current.address} (pid {current.pid})"


def _ensure_topics(settings: KafkaSettings | None = None) -> list[str]:
    """Create the declared topics, then wait until the broker is ready for every client: each
    topic has its leaders, and groups and transactions have their coordinators (on a fresh
    broker the first service to start would otherwise meet NotLeaderForPartition and
    COORDINATOR_NOT_AVAILABLE, and a group could be assigned without a topic's partitions)."""
    try:
        from posttrain.events.kafka.admin import await_coordinators, ensure_topics
    except ImportError as exc:
        raise StackError("topics", f"cannot import posttrain.events.kafka: {exc}") from exc
    from aiokafka.errors import KafkaError

    settings = settings or KafkaSettings.from_env()
    deadline = time.monotonic() + TOPICS_TIMEOUT_S

    async def prepare() -> list[str]:
        created = await ensure_topics(settings)
        await await_coordinators(settings)
        return created

    while True:
        try:
            return asyncio.run(asyncio.wait_for(prepare(), TOPICS_TIMEOUT_S))
        except (KafkaError, RuntimeError, OSError, TimeoutError) as exc:
            if time.monotonic() >= deadline:
                raise StackError("topics", f"creating the declared topics failed: {exc!r}") from exc
            time.sleep(1.0)


def _topics_step(settings: KafkaSettings | None = None) -> str:
    from posttrain.events.topics import TOPICS

    created = _ensure_topics(settings)
    if created:
        return f"topics: created {len(created)} of {len(TOPICS)} ({', '.join(sorted(created))})"
    return f"topics: all {len(TOPICS)} declared topics present"


def _database_step(paths: StackPaths) -> str:
    from posttrain.service.migrate import apply_migrations

    target = database_target()
    created = postgres.ensure_role_and_database(paths, target)
    dsn = database_url()
    try:
        applied = asyncio.run(apply_migrations(dsn))
    except Exception as exc:  # asyncpg and SQL errors alike: report, do not trace back
        raise StackError("migrations", f"applying migrations failed: {exc!r}") from exc
    parts = [f"created {', '.join(created)}"] if created else []
    parts.append(f"applied {', '.join(applied)}" if applied else "migrations up to date")
    return f"database: {target.database} as {target.user}: {'; '.join(parts)}"


def _retrying(action: Callable[[], T], timeout_s: float = TOPICS_TIMEOUT_S) -> T:
    """``action`` again until it stops raising StackError (a broker that has just opened its
    port may still refuse requests for a moment), up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return action()
        except StackError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1.0)


def _secure_kafka_up() -> bool:
    """The secured broker: certificates and passwords, the broker, its users and ACLs, the
    declared topics (created by the admin), the principals' environment files."""
    layout = secure.secure_layout()
    address = secure.secure_address()
    namespace = KafkaSettings.from_env().namespace
    with process.file_lock(layout.paths.lock):
        security = _attempt(lambda: secure.prepare(layout, address))
        if security is None:
            return False
        started = _attempt(lambda: kafka.start(layout.paths, address, security))
        if started is None:
            return False
        print(_started_line(*started).replace(kafka.NAME, secure.NAME, 1))
        line = _attempt(
            lambda: _retrying(lambda: secure.apply_users_and_acls(layout, address, namespace))
        )
        if line is None:
            return False
        print(f"{secure.NAME}: {line}")
        admin = secure.principal_settings(layout, address, "admin", namespace)
        line = _attempt(lambda: _topics_step(admin))
        if line is None:
            return False
        print(line)
        secure.write_env_files(layout, address, namespace)
        print(
            f"{secure.NAME}: credentials in {layout.secrets} (CA: ca.pem); before a service: "
            f"set -a; . {layout.secrets}/<principal>.env; set +a"
        )
    return True


def up(components: Sequence[str] | None = None, *, secure_kafka: bool = False) -> int:
    """Start the components that are not running and prepare them; 0 if all are ready.
    ``secure_kafka``: the broker is the secured one (``posttrain.stack.secure``)."""
    wanted = _selected(components)
    paths = stack_paths()
    # Each component: how it is started, then what makes it ready for clients.
    steps: list[tuple[str, Callable[[], tuple[str, ComponentStatus]], Callable[[], str]]] = [
        (kafka.NAME, lambda: kafka.start(paths, kafka_address()), _topics_step),
        (
            postgres.NAME,
            lambda: postgres.start(paths, database_target()),
            lambda: _database_step(paths),
        ),
    ]
    ok = True
    if secure_kafka and kafka.NAME in wanted:
        wanted.remove(kafka.NAME)
        ok = _secure_kafka_up()
    with process.file_lock(paths.lock):
        for name, start, prepare in steps:
            if name not in wanted:
                continue
            started = _attempt(start)
            if started is None:
                ok = False
                continue
            print(_started_line(*started))
            line = _attempt(prepare)
            if line is None:
                ok = False
            else:
                print(line)
    return 0 if ok else 1


def down(components: Sequence[str] | None = None, *, secure_kafka: bool = False) -> int:
    """Stop what ``up`` started (all components, or the named ones); data is kept.
    ``secure_kafka``: the broker to stop is the secured one."""
    wanted = _selected(components)
    paths = stack_paths()
    ok = True
    if secure_kafka and kafka.NAME in wanted:
        wanted.remove(kafka.NAME)
        layout = secure.secure_layout()
        with process.file_lock(layout.paths.lock):
            result = _attempt(lambda: kafka.stop(layout.paths))
        ok = result is not None
        if result is not None:
            print(f"{secure.NAME}: {result}")
    with process.file_lock(paths.lock):
        for name in wanted:
            stop: Callable[[StackPaths], str] = _STOPS[name]
            result = _attempt(lambda: stop(paths))  # noqa: B023 (called at once)
            if result is None:
                ok = False
            else:
                print(f"{name}: {result}")
    return 0 if ok else 1


def statuses(
    paths: StackPaths | None = None, *, secure_kafka: bool = False
) -> list[ComponentStatus]:
    paths = paths or stack_paths()
    if secure_kafka:
        found = kafka.status(secure.secure_layout().paths, secure.secure_address())
        broker = dataclasses.replace(found, name=secure.NAME)
    else:
        broker = kafka.status(paths, kafka_address())
    return [broker, postgres.status(paths, database_target())]


def status(quiet: bool = False, *, secure_kafka: bool = False) -> int:
    """One line per component; 0 only if every component is running."""
    current = statuses(secure_kafka=secure_kafka)
    if not quiet:
        for component in current:
            print(component.line())
    return 0 if all(c.state is State.RUNNING for c in current) else 1
