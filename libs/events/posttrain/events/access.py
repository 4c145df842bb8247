"""Who may do what on a secured cluster: one Kafka principal per service and the ACLs each is
given, derived from the topic registry (``topics.py``). The one place this table is written;
``posttrain stack up --secure`` applies it, and a real cluster's operator can print it
(``acl_entries``) to apply the same.

Each principal gets only what its service does: only the orchestrator writes
``posttrain.pipeline.events``; an agent reads only ``posttrain.agent.commands`` and writes only
stage reports, metrics and heartbeats (and the dead-letter topic, where a consumer parks what
it cannot read). Pure data, no Kafka client here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from posttrain.events.topics import Topic, physical_name


class Principal(StrEnum):
    """The SCRAM user names (``User:<name>`` on the broker)."""

    ORCHESTRATOR = "orchestrator"
    INGEST = "ingest"
    DIAGNOSTICS = "diagnostics"
    RECORDER = "recorder"
    GATEWAY = "gateway"
    AGENT = "agent"
    # Creates topics, users and ACLs, and is the broker's own inter-broker identity: a super
    # user. The CLI's commands that send (``posttrain submit``) run as the gateway or as it.
    ADMIN = "admin"


class Operation(StrEnum):
    READ = "READ"
    WRITE = "WRITE"
    DESCRIBE = "DESCRIBE"
    CREATE = "CREATE"
    DESCRIBE_CONFIGS = "DESCRIBE_CONFIGS"


class Resource(StrEnum):
    TOPIC = "TOPIC"
    GROUP = "GROUP"
    TRANSACTIONAL_ID = "TRANSACTIONAL_ID"


@dataclass(frozen=True, slots=True)
class Grant:
    """What one principal may do. Names are logical (the namespace is applied by
    ``acl_entries``); ``*_prefixes`` match every name that starts with them."""

    reads: tuple[Topic, ...] = ()
    writes: tuple[Topic, ...] = ()
    # Topics it only looks at (metadata, end offsets), e.g. to tell whether a read model is
    # behind the log.
    describes: tuple[Topic, ...] = ()
    groups: tuple[str, ...] = ()
    group_prefixes: tuple[str, ...] = ()
    # Consumer groups it only describes (who holds the orchestrator's partitions).
    described_groups: tuple[str, ...] = ()
    transactional_id_prefixes: tuple[str, ...] = ()
    # Topics of its own it creates and uses (a Faust app's changelogs), by prefix.
    owned_topic_prefixes: tuple[str, ...] = ()


# The group and transactional ids below are the services' own constants (kept here as text so
# that this contract does not import the services); tests/integration/secure runs the services
# under these grants, so a drift shows there as a refused request.
GRANTS: dict[Principal, Grant] = {
    Principal.ORCHESTRATOR: Grant(
        reads=(
            Topic.PIPELINE_COMMANDS,
            Topic.STAGE_REPORTS,
            Topic.PIPELINE_EVENTS,
            Topic.AGENTS,
            Topic.ORCHESTRATOR_SNAPSHOTS,
            Topic.STAGE_CACHE,
        ),
        writes=(
            Topic.PIPELINE_EVENTS,
            Topic.AGENT_COMMANDS,
            Topic.ORCHESTRATOR_SNAPSHOTS,
            Topic.STAGE_CACHE,
            Topic.DLQ,
        ),
        groups=("orchestrator",),
        transactional_id_prefixes=("orchestrator-",),
    ),
    Principal.INGEST: Grant(
        reads=(Topic.METRICS,),
        writes=(Topic.DLQ,),
        groups=("metrics-ingest",),
    ),
    Principal.DIAGNOSTICS: Grant(
        reads=(Topic.METRICS, Topic.STAGE_REPORTS, Topic.ANOMALIES),
        writes=(Topic.ANOMALIES, Topic.ALERTS, Topic.PIPELINE_COMMANDS, Topic.DLQ),
        groups=("posttrain-diagnostics",),
        owned_topic_prefixes=("posttrain-diagnostics-",),
    ),
    Principal.RECORDER: Grant(
        reads=(Topic.ANOMALIES, Topic.PIPELINE_EVENTS),
        writes=(Topic.DLQ,),
        groups=("posttrain-diagnostics-recorder",),
    ),
    Principal.GATEWAY: Grant(
        writes=(Topic.PIPELINE_COMMANDS,),
        describes=(Topic.PIPELINE_EVENTS,),
        described_groups=("orchestrator",),
    ),
    Principal.AGENT: Grant(
        reads=(Topic.AGENT_COMMANDS,),
        writes=(Topic.STAGE_REPORTS, Topic.METRICS, Topic.AGENTS, Topic.DLQ),
        group_prefixes=("trainer-agent-",),
    ),
}

SUPER_USERS: tuple[Principal, ...] = (Principal.ADMIN,)


@dataclass(frozen=True, slots=True, order=True)
class AclEntry:
    """One ALLOW rule: ``principal`` may do ``operation`` on the resource ``name`` (a literal
    name, or every name starting with it when ``prefixed``), from any host."""

    principal: str
    resource: Resource
    name: str
    prefixed: bool
    operation: Operation

    def line(self) -> str:
        pattern = "prefixed" if self.prefixed else "literal"
        return (
            f"User:{self.principal} {self.operation.value} {self.resource.value} "
            f"{self.name} ({pattern})"
        )


def _namespaced(name: str, namespace: str) -> str:
    return f"{namespace}.{name}" if namespace else name


def acl_entries(namespace: str = "") -> list[AclEntry]:
    """Every ALLOW rule of ``GRANTS`` with the broker-side names of ``namespace``, sorted."""
    entries: set[AclEntry] = set()

    def add(
        principal: Principal, resource: Resource, name: str, op: Operation, prefixed: bool
    ) -> None:
        entries.add(AclEntry(principal.value, resource, name, prefixed, op))

    for principal, grant in GRANTS.items():
        for topic in grant.reads:
            add(principal, Resource.TOPIC, physical_name(topic, namespace), Operation.READ, False)
        for topic in grant.writes:
            add(principal, Resource.TOPIC, physical_name(topic, namespace), Operation.WRITE, False)
        for topic in grant.describes:
            name = physical_name(topic, namespace)
            add(principal, Resource.TOPIC, name, Operation.DESCRIBE, False)
        for group in grant.groups:
            add(principal, Resource.GROUP, _namespaced(group, namespace), Operation.READ, False)
        for group in grant.group_prefixes:
            add(principal, Resource.GROUP, _namespaced(group, namespace), Operation.READ, True)
        for group in grant.described_groups:
            name = _namespaced(group, namespace)
            add(principal, Resource.GROUP, name, Operation.DESCRIBE, False)
        for prefix in grant.transactional_id_prefixes:
            name = _namespaced(prefix, namespace)
            add(principal, Resource.TRANSACTIONAL_ID, name, Operation.WRITE, True)
        for prefix in grant.owned_topic_prefixes:
            name = _namespaced(prefix, namespace)
            for op in (
                Operation.CREATE,
                Operation.READ,
                Operation.WRITE,
                Operation.DESCRIBE_CONFIGS,
            ):
                add(principal, Resource.TOPIC, name, op, True)
    return sorted(entries)


def writers_of(topic: Topic) -> list[Principal]:
    """The principals allowed to write ``topic`` (a check that reads as the design says)."""
    return [p for p, grant in GRANTS.items() if topic in grant.writes]


def readers_of(topic: Topic) -> list[Principal]:
    """The principals allowed to read ``topic``."""
    return [p for p, grant in GRANTS.items() if topic in grant.reads]
