"""Fixtures over the real stack: the broker named by KAFKA_BOOTSTRAP_SERVERS and the PostgreSQL
server named by DATABASE_URL (both started by `posttrain stack up`; `make test` does it), or,
with POSTTRAIN_TEST_STACK=containers, both started in Docker for the run
(`posttrain.testing.stack_choice`, `posttrain.testing.containers`).

Each test run gets its own topic namespace and its own database, so runs never see each other's
data; each bus test gets a fresh namespace of its own. Everything is deleted at the end.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import replace
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from aiokafka.admin import AIOKafkaAdminClient

from posttrain.events.kafka import EventProducer, KafkaSettings, ensure_topics
from posttrain.service.settings import database_url as service_database_url
from posttrain.testing.databases import scratch_database
from posttrain.testing.stack_choice import StackChoiceError, StackKind, require_stack

RUN_ID = f"t{uuid.uuid4().hex[:8]}"
_counter = itertools.count(1)

# --- the stack: local, or containers started for this run ---------------------------------------

_STACK_KIND_KEY = pytest.StashKey[StackKind]()
_CONTAINERS_KEY = pytest.StashKey[ExitStack]()


def pytest_configure(config: pytest.Config) -> None:
    """Choose the stack before any fixture reads its addresses. With containers, start them and
    point KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL at them, so that every settings object and
    every service a test starts finds them as it finds the local stack."""
    try:
        kind = require_stack(os.environ)
    except StackChoiceError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[_STACK_KIND_KEY] = kind
    if kind is StackKind.CONTAINERS:
        from posttrain.testing.containers import containers_stack

        containers = config.stash[_CONTAINERS_KEY] = ExitStack()
        try:
            addresses = containers.enter_context(containers_stack())
        except Exception as exc:  # a pull, a start or the preparation: say which, stop the run
            raise pytest.UsageError(
                f"POSTTRAIN_TEST_STACK=containers: starting Kafka and PostgreSQL in Docker "
                f"failed: {exc!r}"
            ) from exc
        os.environ.update(addresses.environment())


def pytest_unconfigure(config: pytest.Config) -> None:
    containers = config.stash.get(_CONTAINERS_KEY, None)
    if containers is not None:
        containers.close()


def pytest_report_header(config: pytest.Config) -> str:
    database = urlsplit(service_database_url())
    return (
        f"test stack: {config.stash[_STACK_KIND_KEY]} (Kafka at "
        f"{KafkaSettings.from_env().bootstrap_servers}, PostgreSQL at "
        f"{database.hostname}:{database.port or 5432})"
    )


def _require_port(address: str, what: str) -> None:
    host, _, port = address.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            return
    except OSError as exc:
        pytest.fail(
            f"{what} at {address} is not reachable ({exc}): start the stack with "
            "`posttrain stack up` (or `make test`, which does it)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def base_kafka_settings() -> KafkaSettings:
    settings = KafkaSettings.from_env(client_id="posttrain-tests")
    _require_port(settings.bootstrap_servers, "Kafka")
    return settings


@pytest_asyncio.fixture(scope="session")
async def _namespaces(base_kafka_settings: KafkaSettings) -> AsyncIterator[list[str]]:
    created: list[str] = []
    yield created
    admin = AIOKafkaAdminClient(bootstrap_servers=base_kafka_settings.bootstrap_servers)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(f"{RUN_ID}")]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


@pytest_asyncio.fixture
async def kafka_settings(
    base_kafka_settings: KafkaSettings, _namespaces: list[str]
) -> KafkaSettings:
    """Settings naming a fresh namespace with every declared topic created in it."""
    settings = replace(base_kafka_settings, namespace=f"{RUN_ID}-{next(_counter)}")
    await ensure_topics(settings)
    _namespaces.append(settings.namespace)
    return settings


@pytest_asyncio.fixture
async def producer(kafka_settings: KafkaSettings) -> AsyncIterator[EventProducer]:
    async with EventProducer(kafka_settings) as p:
        yield p


@pytest.fixture(scope="session")
def base_database_url() -> str:
    url = service_database_url()
    parts = urlsplit(url)
    _require_port(f"{parts.hostname}:{parts.port or 5432}", "PostgreSQL")
    return url


@pytest_asyncio.fixture(scope="session")
async def database_url(base_database_url: str) -> AsyncIterator[str]:
    """A database of this run's own, migrated to the latest schema, dropped at the end."""
    async with scratch_database(base_database_url, f"posttrain_{RUN_ID}", migrate=True) as url:
        yield url


@pytest.fixture
def run_id() -> Iterator[str]:
    yield f"{RUN_ID}-{uuid.uuid4().hex[:6]}"


# --- hygiene: the default namespace and database are left as they were found -------------------

_FOOTPRINT_KEY = pytest.StashKey["object"]()


def _stack_addresses() -> tuple[str, str] | None:
    """The stack's Kafka and default database, if both answer (a unit-only run may have none)."""
    bootstrap = KafkaSettings.from_env().bootstrap_servers
    database_url = service_database_url()
    parts = urlsplit(database_url)
    for host, port in (
        bootstrap.split(",")[0].rsplit(":", 1),
        (parts.hostname or "127.0.0.1", str(parts.port or 5432)),
    ):
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                pass
        except OSError:
            return None
    return bootstrap, database_url


def pytest_sessionstart(session: pytest.Session) -> None:
    from tests.hygiene import footprint

    addresses = _stack_addresses()
    if addresses is not None:
        session.stash[_FOOTPRINT_KEY] = (addresses, asyncio.run(footprint(*addresses)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tests.hygiene import changes, footprint

    taken = session.stash.get(_FOOTPRINT_KEY, None)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write("\n")
    if taken is None:
        if reporter is not None:
            reporter.write_line("hygiene: no stack at the start, default namespace not checked")
        return
    addresses, before = taken
    found = changes(before, asyncio.run(footprint(*addresses)))
    if reporter is not None:
        if found:
            reporter.write_line(
                "hygiene: FAILED, the suite wrote to the default namespace or database:", red=True
            )
            for line in found:
                reporter.write_line(f"  {line}", red=True)
        else:
            reporter.write_line("hygiene: the default topic namespace and database are untouched")
    if found:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
