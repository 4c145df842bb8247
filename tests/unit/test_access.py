"""The secured cluster's table of rights (``posttrain.events.access``): what the design says each
principal may do, and that every declared topic is covered."""

from __future__ import annotations

from posttrain.events.access import (
    GRANTS,
    AclEntry,
    Operation,
    Principal,
    Resource,
    acl_entries,
    readers_of,
    writers_of,
)
from posttrain.events.topics import TOPICS, Topic


def test_only_the_orchestrator_writes_the_event_log():
    assert writers_of(Topic.PIPELINE_EVENTS) == [Principal.ORCHESTRATOR]


def test_agents_read_only_their_commands_and_write_only_reports_metrics_heartbeats():
    agent = GRANTS[Principal.AGENT]
    assert agent.reads == (Topic.AGENT_COMMANDS,)
    # The dead-letter topic beside them: where a consumer parks what it cannot read.
    assert set(agent.writes) == {Topic.STAGE_REPORTS, Topic.METRICS, Topic.AGENTS, Topic.DLQ}
    assert not agent.transactional_id_prefixes and not agent.owned_topic_prefixes


def test_every_declared_topic_has_a_writer_and_every_read_one_a_reader():
    for topic in TOPICS:
        assert writers_of(topic), f"nobody may write {topic}"
    # Alerts and dead letters are read by people (as the admin), not by a service.
    unread = {t for t in TOPICS if not readers_of(t)}
    assert unread == {Topic.ALERTS, Topic.DLQ}


def test_entries_carry_the_namespace_of_topics_groups_and_transactional_ids():
    entries = acl_entries("ns")
    assert (
        AclEntry(
            "orchestrator", Resource.TOPIC, "ns.posttrain.pipeline.events", False, Operation.WRITE
        )
        in entries
    )
    assert (
        AclEntry(
            "orchestrator", Resource.TRANSACTIONAL_ID, "ns.orchestrator-", True, Operation.WRITE
        )
        in entries
    )
    assert AclEntry("agent", Resource.GROUP, "ns.trainer-agent-", True, Operation.READ) in entries
    plain = {e.name for e in acl_entries()}
    assert "posttrain.pipeline.events" in plain and not any(n.startswith("ns.") for n in plain)
    # The admin is a super user on the broker, never in the table.
    assert not any(e.principal == Principal.ADMIN for e in entries)
