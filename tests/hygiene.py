"""The suite leaves the user's data alone: the default topic namespace and the default database
are as it found them.

Every test and benchmark works in a namespace and a database of its own; one that forgot (a
service started without the test's settings) would write into what a user's real pipelines
use. ``conftest`` takes a footprint of both when the session starts and again when it ends, and
fails the run if they differ, naming what changed.

The footprint is the end offset of every partition of every topic outside a namespace (a topic
appearing counts too) and, per table of the default database, the count of rows inserted,
updated and deleted (``pg_stat_user_tables``, read once no other session is connected to it, so
that every backend's counts have been flushed; a table appearing counts too).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from posttrain.events.topics import Topic

# A topic outside any namespace: a logical name as it is (``Topic``), or a name derived from one
# by a service (Faust's changelogs start ``posttrain-``).
_DEFAULT_PREFIXES = ("posttrain.", "posttrain-")


@dataclass(frozen=True)
class Footprint:
    offsets: dict[str, int]  # "topic[partition]" -> end offset
    rows_written: dict[str, int]  # table -> rows inserted + updated + deleted


def is_default_topic(name: str) -> bool:
    return name.startswith(_DEFAULT_PREFIXES) or name in {t.value for t in Topic}


async def _offsets(bootstrap: str) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [n for n in await admin.list_topics() if is_default_topic(n)]
        described = await admin.describe_topics(names) if names else []
    finally:
        await admin.close()
    partitions = [
        TopicPartition(topic["topic"], p["partition"])
        for topic in described
        for p in topic["partitions"]
    ]
    if not partitions:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return {f"{tp.topic}[{tp.partition}]": offset for tp, offset in ends.items()}


async def _rows_written(database_url: str, settle_s: float) -> dict[str, int]:
    """Rows inserted, updated and deleted per table of the database's own (user) tables, once
    no other session is connected to it (a backend's counts reach the statistics at the latest
    when it ends), or after ``settle_s``. System catalogs are left out: autovacuum's ANALYZE
    writes them on its own schedule (on a fresh cluster, a few hundred rows)."""
    deadline = time.monotonic() + settle_s
    database = urlsplit(database_url).path.lstrip("/")
    while True:
        connection = await asyncpg.connect(database_url)
        try:
            others = await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> "
                "pg_backend_pid() AND backend_type = 'client backend'",
                database,
            )
            if others == 0 or time.monotonic() >= deadline:
                rows = await connection.fetch(
                    "SELECT schemaname || '.' || relname AS name, "
                    "n_tup_ins + n_tup_upd + n_tup_del AS n FROM pg_stat_user_tables"
                )
                return {r["name"]: int(r["n"]) for r in rows}
        finally:
            await connection.close()
        await asyncio.sleep(0.2)


async def footprint(bootstrap: str, database_url: str, settle_s: float = 10.0) -> Footprint:
    offsets, rows = await asyncio.gather(_offsets(bootstrap), _rows_written(database_url, settle_s))
    return Footprint(offsets, rows)


def changes(before: Footprint, after: Footprint) -> list[str]:
    """What the suite changed, one line each (empty when nothing did)."""
    found = [
        f"topic partition {name}: end offset {before.offsets.get(name, 'absent')} -> {offset}"
        for name, offset in sorted(after.offsets.items())
        if before.offsets.get(name) != offset
    ]
    for table, n in sorted(after.rows_written.items()):
        if before.rows_written.get(table, 0) != n:
            found.append(
                f"default database, table {table}: rows inserted+updated+deleted "
                f"{before.rows_written.get(table, 'absent')} -> {n}"
            )
    return found
