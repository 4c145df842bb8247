"""The agents table and the stage cache read their topics with views (``TopicFollower``): what
they hold is what the records say, and a record that cannot be read is skipped alone.

The records are built as aiokafka hands them out, from the bytes ``encode`` writes; nothing
here connects to a broker (the tables are never started)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from posttrain.events import Envelope, encode
from posttrain.events.kafka import KafkaSettings
from posttrain.events.messages import AgentHeartbeat, StageOutputsCached
from posttrain.orchestrator.core.decide import CacheEntry
from posttrain.orchestrator.shell.agents import AgentTable
from posttrain.orchestrator.shell.stage_cache import StageCacheTable

NOWHERE = KafkaSettings(bootstrap_servers="127.0.0.1:1")
T0 = 1_000_000.0


def record(envelope: Envelope[Any] | None, offset: int = 0, value: bytes | None = None) -> Any:
    headers: Any = ()
    if envelope is not None:
        _, value, headers = encode(envelope)
    assert value is not None
    return ConsumerRecord(
        topic="t",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value),
        headers=headers,
    )


def heartbeat(agent: str, running: list[str], slots: int = 3) -> Envelope[Any]:
    beat = AgentHeartbeat(
        agent_id=agent,
        host="h",
        gpus=2,
        free_gpus=1,
        labels=["a100"],
        running=running,
        slots=slots,
        interval_s=1.0,
        sent_at=T0,
    )
    return Envelope.create(beat, key=agent)


@pytest.fixture
async def agents() -> AsyncIterator[AgentTable]:
    table = AgentTable(NOWHERE, silence_intervals=3)
    yield table
    await table.stop()


async def test_heartbeats_read_as_views_give_each_agent_its_capacity(agents):
    agents.take(agents.read([record(heartbeat("a", ["s1"])), record(heartbeat("b", []))]))

    views = agents.views(T0)
    assert views["a"].free_slots == 2 and views["b"].free_slots == 3
    assert views["a"].free_gpus == 1 and views["a"].labels == frozenset({"a100"})
    assert agents.running("a") == frozenset({"s1"})
    agents.reserve("b", "s2", gpus=1)  # a stage sent since: counted until a heartbeat shows it
    assert agents.views(T0)["b"].free_slots == 2


async def test_an_unreadable_record_is_skipped_and_the_rest_of_its_batch_taken(agents):
    batch = [
        record(heartbeat("a", [])),
        record(None, offset=1, value=b"{not json"),
        record(heartbeat("b", ["s1"]), offset=2),
    ]
    agents.take(agents.read(batch))

    assert sorted(agents.views(T0)) == ["a", "b"]
    assert agents.unreadable == 1


async def test_stage_cache_entries_read_as_views_are_kept_by_key():
    cache = StageCacheTable(NOWHERE)
    made = StageOutputsCached(
        cache_key="k1", pipeline_id="p", command_id="c1", outputs={"checkpoint": "/x"}
    )
    try:
        cache.take(cache.read([record(Envelope.create(made, key="k1"))]))
        assert cache.entries == {"k1": CacheEntry({"checkpoint": "/x"}, "c1")}
    finally:
        await cache.stop()
