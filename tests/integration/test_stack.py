"""The local stack itself: `posttrain stack up|down|status`, `posttrain doctor` and migrations,
against the real broker and PostgreSQL server.

These tests stop and start the shared stack, so each one brings it back up in a `finally`: the
rest of the suite needs it running.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from posttrain.events.kafka.admin import check_topics
from posttrain.events.kafka.settings import KafkaSettings
from posttrain.service.migrate import (
    PLATFORM,
    all_migrations,
    apply_migrations,
    migration_sets,
    pending_migrations,
)
from posttrain.service.settings import database_url
from posttrain.stack import commands, kafka
from posttrain.stack.component import State
from posttrain.stack.config import database_target, kafka_address
from posttrain.stack.paths import stack_paths
from posttrain.stack.process import pid_alive, port_open, wait_until
from posttrain.testing.databases import scratch_database

pytestmark = pytest.mark.integration

POSTTRAIN = str(Path(sys.executable).with_name("posttrain"))
DSN = database_url()


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [POSTTRAIN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def stack_up() -> None:
    result = run_cli("stack", "up")
    assert result.returncode == 0, result.stdout + result.stderr


def restore_stack() -> None:
    """Bring the whole stack back and prove it is running (for the tests that follow)."""
    stack_up()
    assert run_cli("stack", "status", "--quiet").returncode == 0


def pids() -> dict[str, int | None]:
    return {s.name: s.pid for s in commands.statuses()}


def our_ports() -> list[tuple[str, int]]:
    address = kafka_address()
    target = database_target()
    return [
        (address.host, address.port),
        (address.host, address.controller_port),
        (target.host, target.port),
    ]


def gone(pid: int) -> bool:
    return not pid_alive(pid)


def closed(host: str, port: int) -> bool:
    return not port_open(host, port, 0.5)


def topic_problems() -> list[str]:
    problems = asyncio.run(check_topics(KafkaSettings.from_env()))
    return [f"{p.topic}: {p.problem}" for p in problems]


async def _insert_marker(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO stack_markers (name) VALUES ($1)", name)
    finally:
        await conn.close()


async def _marker_exists(dsn: str, name: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM stack_markers WHERE name = $1", name))
    finally:
        await conn.close()


async def _delete_marker(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DELETE FROM stack_markers WHERE name = $1", name)
    finally:
        await conn.close()


def test_up_twice_is_harmless() -> None:
    try:
        stack_up()
        before = pids()
        assert all(before.values()), before

        second = run_cli("stack", "up")

        assert second.returncode == 0, second.stdout + second.stderr
        assert "kafka: already running" in second.stdout
        assert "postgres: already running" in second.stdout
        assert pids() == before
        status = run_cli("stack", "status")
        assert status.returncode == 0, status.stdout
        assert status.stdout.count(" running ") == 2, status.stdout
    finally:
        restore_stack()


def test_the_broker_runs_with_the_jvm_settings_of_kafkas_own_start_script() -> None:
    # A fixed 1 GB heap and G1's 20 ms pause goal (kafka-server-start.sh, kafka-run-class.sh):
    # with 512 MB that grew on demand, a broker holding days of transaction state marked its
    # heap every few seconds.
    try:
        stack_up()
        pid = pids()["kafka"]
        assert pid is not None
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        assert argv[0].endswith("java"), argv
        for option in ("-Xms1g", "-Xmx1g", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"):
            assert option in argv, argv
        assert argv.index("-Xmx1g") < argv.index("kafka.Kafka"), argv  # the JVM's, not Kafka's
    finally:
        restore_stack()


async def _broker_configs(settings: KafkaSettings) -> dict[str, str]:
    admin = AIOKafkaAdminClient(**settings.client_options())
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, "1")]  # the stack's one node
        )
    finally:
        await admin.close()
    return {
        entry[0]: entry[1]
        for response in responses
        for *_, entries in response.resources
        for entry in entries
    }


def test_the_coordinators_topics_roll_segments_small_enough_to_compact() -> None:
    # At 100 MB a segment of __transaction_state never rolled on a developer's broker, so test
    # runs' transaction states were never compacted (1.5 GB after some days).
    try:
        stack_up()
        configs = asyncio.run(_broker_configs(KafkaSettings.from_env()))
        assert configs["transaction.state.log.segment.bytes"] == str(10 * 1024 * 1024)
        assert configs["offsets.topic.segment.bytes"] == str(10 * 1024 * 1024)
    finally:
        restore_stack()


def test_down_stops_everything_and_up_brings_back_topics_and_data(database_url: str) -> None:
    # The marker goes into this run's own database: the server's data survives as a whole,
    # and the user's default database is never written by a test.
    marker = f"survives-{uuid.uuid4().hex[:8]}"
    paths = stack_paths()
    try:
        stack_up()
        asyncio.run(_insert_marker(database_url, marker))
        before = pids()

        down = run_cli("stack", "down")

        assert down.returncode == 0, down.stdout + down.stderr
        for name, pid in before.items():
            assert pid is not None
            assert wait_until(partial(gone, pid), 30), f"{name} pid {pid} still alive"
        for host, port in our_ports():
            assert wait_until(partial(closed, host, port), 30), f"{host}:{port} still open"
        # Nothing of ours under another pid either, and no stale pid files.
        assert kafka.our_pid(paths) is None
        assert not paths.kafka_pid.exists()
        assert not (paths.pg_data / "postmaster.pid").exists()
        status = run_cli("stack", "status")
        assert status.returncode == 1
        assert status.stdout.count(" stopped ") == 2, status.stdout
        assert run_cli("stack", "status", "--quiet").stdout == ""

        up = run_cli("stack", "up")

        assert up.returncode == 0, up.stdout + up.stderr
        assert "topics: all" in up.stdout  # the topics survived: nothing to create
        assert topic_problems() == []
        assert asyncio.run(_marker_exists(database_url, marker))
    finally:
        restore_stack()
        asyncio.run(_delete_marker(database_url, marker))


def test_doctor_reports_a_stopped_broker_with_the_fix() -> None:
    address = kafka_address()
    try:
        stack_up()
        assert commands.down(components=["kafka"]) == 0
        assert not port_open(address.host, address.port, 0.5)
        assert commands.statuses()[0].state is State.STOPPED

        started = time.monotonic()
        doctor = run_cli("doctor", timeout=60)
        elapsed = time.monotonic() - started

        assert doctor.returncode == 1, doctor.stdout
        assert f"Kafka broker at {address} is not reachable" in doctor.stdout
        assert "fix: posttrain stack up" in doctor.stdout
        # Only the broker is down: PostgreSQL is still reported fine.
        assert "OK       PostgreSQL" in doctor.stdout
        assert elapsed < 20, f"doctor took {elapsed:.1f} s on a stopped broker"
    finally:
        restore_stack()
    healthy = run_cli("doctor", timeout=60)
    assert healthy.returncode == 0, healthy.stdout


async def _migrations_in_fresh_database() -> tuple[list[list[str]], list[str], list[str], int]:
    async with scratch_database(DSN, "posttrain_migrate") as url:
        pending_before = await pending_migrations(url)
        # Two callers at once: the advisory lock lets exactly one apply each file.
        concurrent = await asyncio.gather(apply_migrations(url), apply_migrations(url))
        again = await apply_migrations(url)
        conn = await asyncpg.connect(url)
        try:
            # Each owner records its own: the platform in schema_migrations, each service in
            # <owner>_migrations.
            ledgers = [s.ledger for s in migration_sets()]
            assert {
                "schema_migrations",
                "diagnostics_migrations",
                "metrics_ingest_migrations",
                "orchestrator_migrations",
            } <= set(ledgers)
            rows = 0
            for ledger in ledgers:
                rows += await conn.fetchval(f"SELECT count(*) FROM {ledger}")
        finally:
            await conn.close()
        assert await pending_migrations(url) == []
        return list(concurrent), pending_before, again, int(rows)


def test_migrations_are_idempotent_and_safe_when_concurrent() -> None:
    try:
        every = [m.id for m in all_migrations()]
        assert every and every[0] == "0001_foundation"
        # The platform's first, then each owner's, numbered on their own.
        platform = [m.id for m in migration_sets(PLATFORM)[0].migrations]
        assert every[: len(platform)] == platform
        assert "diagnostics/0001_anomalies" in every
        assert "orchestrator/0001_pipelines" in every

        concurrent, pending_before, again, rows = asyncio.run(_migrations_in_fresh_database())

        assert pending_before == every
        assert sorted([*concurrent[0], *concurrent[1]]) == every
        assert [] in concurrent
        assert again == []
        assert rows == len(every)
        # The stack's own database is up to date, and re-applying changes nothing.
        assert asyncio.run(pending_migrations(DSN)) == []
        assert asyncio.run(apply_migrations(DSN)) == []
    finally:
        restore_stack()
