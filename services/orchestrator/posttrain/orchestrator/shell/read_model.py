"""How one projected batch reaches the read model's tables: in one transaction, in bulk.

A batch of a long catch-up holds tens of thousands of history rows and thousands of pipelines:
row-at-a-time statements (``executemany`` of upserts whose guard is a subquery) made the first
catch-up of a long log run at about a thousand events a second. Here the batch's rows are copied
(``COPY``, binary) into temporary tables of the connection and merged into the real ones by one
statement per table, with the same rules as before:

- a pipelines row only moves to a later version (``version`` counts the events it reflects);
- a stage row is written only with its pipeline's row at the same version, so a stage never
  belongs to another version of its pipeline than the one the pipelines row shows;
- history rows are keyed by (pipeline, number): written again, they change nothing (they are
  copied straight into their table, and merged only when some are there already);
- the projection's offsets are saved in the same transaction as the rows they stand for, and the
  touched pipelines are NOTIFYed on commit, with the rows.

The temporary tables are made once per connection (``prepare_connection``, the pool's ``init``)
and emptied at each commit: a batch never sees another's rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import asyncpg

from posttrain.service import notify

# The columns of each copied row, in the order the projection builds them.
PIPELINE_COLUMNS = (
    "pipeline_id",
    "name",
    "status",
    "submitted_by",
    "submitted_at",
    "finished_at",
    "layers",
    "errors",
    "version",
    "state",
    "state_offset",
)
STAGE_COLUMNS = (
    "pipeline_id",
    "name",
    "position",
    "task",
    "status",
    "attempt",
    "command_id",
    "agent_id",
    "job_id",
    "started_at",
    "finished_at",
    "outputs",
    "error",
    "waiting_reason",
    "cached_from",
    "attempts",
    "version",  # the pipelines row's version the stage row goes with (not a column of its own)
    "depends_on",
)
HISTORY_COLUMNS = (
    "pipeline_id",
    "seq",
    "at",
    "type",
    "stage",
    "attempt",
    "summary",
    "data",
    "event_id",
)

_PIPELINES = "projected_pipelines"
_STAGES = "projected_stages"
_HISTORY = "projected_history"

# LIKE: the temporary tables follow the real ones' columns as migrations change them.
_CREATE_TEMPORARY = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS {_PIPELINES} (LIKE pipelines INCLUDING DEFAULTS)
    ON COMMIT DELETE ROWS;
CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGES} (LIKE pipeline_stages, version integer NOT NULL)
    ON COMMIT DELETE ROWS;
CREATE TEMPORARY TABLE IF NOT EXISTS {_HISTORY} (LIKE pipeline_history) ON COMMIT DELETE ROWS;
"""


def _set(columns: tuple[str, ...], *, key: tuple[str, ...]) -> str:
    return ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in key)


_MERGE_PIPELINES = f"""
INSERT INTO pipelines ({", ".join(PIPELINE_COLUMNS)}, updated_at)
SELECT {", ".join(PIPELINE_COLUMNS)}, now() FROM {_PIPELINES}
ON CONFLICT (pipeline_id) DO UPDATE SET
    {_set(PIPELINE_COLUMNS, key=("pipeline_id",))}, updated_at = now()
WHERE pipelines.version <= EXCLUDED.version
"""

_STAGE_DATA = tuple(c for c in STAGE_COLUMNS if c != "version")
_MERGE_STAGES = f"""
INSERT INTO pipeline_stages ({", ".join(_STAGE_DATA)})
SELECT {", ".join(f"s.{c}" for c in _STAGE_DATA)}
FROM {_STAGES} s JOIN pipelines p ON p.pipeline_id = s.pipeline_id AND p.version = s.version
ON CONFLICT (pipeline_id, name) DO UPDATE SET {_set(_STAGE_DATA, key=("pipeline_id", "name"))}
"""

_MERGE_HISTORY = f"""
INSERT INTO pipeline_history ({", ".join(HISTORY_COLUMNS)})
SELECT {", ".join(HISTORY_COLUMNS)} FROM {_HISTORY}
ON CONFLICT (pipeline_id, seq) DO NOTHING
"""

_UPSERT_AGENT = """
INSERT INTO agents AS a (agent_id, host, labels, gpus, free_gpus, running, interval_s, stopping,
                         last_heartbeat_at, silent_after, topic_partition, topic_offset, slots)
VALUES ($1, $2, $3::jsonb, $4, $5, $6::jsonb, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (agent_id) DO UPDATE SET
    host = EXCLUDED.host, labels = EXCLUDED.labels, gpus = EXCLUDED.gpus,
    free_gpus = EXCLUDED.free_gpus, running = EXCLUDED.running,
    interval_s = EXCLUDED.interval_s, stopping = EXCLUDED.stopping,
    last_heartbeat_at = EXCLUDED.last_heartbeat_at, silent_after = EXCLUDED.silent_after,
    topic_partition = EXCLUDED.topic_partition, topic_offset = EXCLUDED.topic_offset,
    slots = EXCLUDED.slots
WHERE a.topic_partition <> EXCLUDED.topic_partition OR a.topic_offset < EXCLUDED.topic_offset
"""

_SAVE_OFFSET = """
INSERT INTO projection_offsets (projection, topic, partition, next_offset)
VALUES ($1, $2, $3, $4)
ON CONFLICT (projection, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset
"""


@dataclass(slots=True)
class RowBatch:
    """Everything one projected batch writes, as rows in the orders declared above."""

    pipelines: list[tuple[Any, ...]] = field(default_factory=list)
    stages: list[tuple[Any, ...]] = field(default_factory=list)  # only the changed ones
    history: list[tuple[Any, ...]] = field(default_factory=list)
    agents: list[tuple[Any, ...]] = field(default_factory=list)
    # (projection, topic, partition, next offset) of each partition read
    offsets: list[tuple[str, str, int, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.pipelines or self.history or self.agents or self.offsets)


async def prepare_connection(conn: asyncpg.Connection) -> None:
    """Make the connection's temporary tables (the pool's ``init``: once per connection)."""
    await conn.execute(_CREATE_TEMPORARY)


async def _write_history(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """History rows are new but where the log is projected again (a partition folded again, a
    second projection into the same tables): copied straight into the table, and only if one
    is there already, through the temporary table and a merge that keeps the existing rows."""
    try:
        async with conn.transaction():  # a savepoint: a refused copy leaves the batch's rows
            await conn.copy_records_to_table(
                "pipeline_history", records=rows, columns=HISTORY_COLUMNS
            )
    except asyncpg.UniqueViolationError:
        await conn.copy_records_to_table(_HISTORY, records=rows, columns=HISTORY_COLUMNS)
        await conn.execute(_MERGE_HISTORY)


async def write_batch(conn: asyncpg.Connection, batch: RowBatch) -> None:
    """Write ``batch`` in one transaction (see the module's doc)."""
    async with conn.transaction():
        if batch.pipelines:
            await conn.copy_records_to_table(
                _PIPELINES, records=batch.pipelines, columns=PIPELINE_COLUMNS
            )
            await conn.execute(_MERGE_PIPELINES)
        if batch.stages:
            await conn.copy_records_to_table(_STAGES, records=batch.stages, columns=STAGE_COLUMNS)
            await conn.execute(_MERGE_STAGES)
        if batch.history:
            await _write_history(conn, batch.history)
        if batch.agents:
            # Every instance projects every agent: rows locked in one order (by id) by all,
            # or two instances' batches wait on each other ("deadlock detected").
            await conn.executemany(_UPSERT_AGENT, sorted(batch.agents, key=itemgetter(0)))
        if batch.offsets:
            await conn.executemany(_SAVE_OFFSET, batch.offsets)
        if batch.pipelines:
            # Delivered on commit, with the rows: a live view reads them when woken.
            await conn.execute(
                notify.NOTIFY_EACH, notify.PIPELINES, [row[0] for row in batch.pipelines]
            )
