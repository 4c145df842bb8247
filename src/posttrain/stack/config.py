"""Pure configuration logic for the local stack: addresses from the environment and the text of
every configuration file the stack writes. No I/O here, so all of it is unit-testable."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from posttrain.events.kafka.settings import KafkaSettings
from posttrain.service.settings import database_url


@dataclass(frozen=True, slots=True)
class KafkaAddress:
    host: str
    port: int

    @property
    def controller_port(self) -> int:
        # The convention of this project: the KRaft controller listens right above the broker.
        return self.port + 1

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class DatabaseTarget:
    user: str
    password: str
    host: str
    port: int
    database: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def parse_bootstrap(value: str) -> KafkaAddress:
    """The first ``host:port`` of a KAFKA_BOOTSTRAP_SERVERS value: the node the stack runs."""
    first = value.split(",")[0].strip()
    if "://" in first:  # tolerate PLAINTEXT://host:port
        first = first.split("://", 1)[1]
    host, sep, port = first.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"KAFKA_BOOTSTRAP_SERVERS: expected host:port, got {value!r}")
    return KafkaAddress(host.strip("[]"), int(port))


def parse_database_url(value: str) -> DatabaseTarget:
    url = urlsplit(value)
    if url.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"DATABASE_URL: expected postgresql://..., got {value!r}")
    database = unquote(url.path.lstrip("/"))
    if not url.username or not database:
        raise ValueError(f"DATABASE_URL: needs a user and a database name, got {value!r}")
    return DatabaseTarget(
        user=unquote(url.username),
        password=unquote(url.password or ""),
        host=url.hostname or "127.0.0.1",
        port=url.port or 5432,
        database=database,
    )


def kafka_address() -> KafkaAddress:
    """The node of the configured broker (``KafkaSettings.from_env``)."""
    return parse_bootstrap(KafkaSettings.from_env().bootstrap_servers)


def database_target() -> DatabaseTarget:
    """The configured database (``posttrain.service.settings.database_url``)."""
    return parse_database_url(database_url())


def new_cluster_id() -> str:
    """A KRaft cluster id as ``StorageTool random-uuid`` makes it, without starting a JVM.

    Kafka's Uuid prints as URL-safe base64 without padding and never hands out ids that start
    with '-' (they read as command-line flags)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not text.startswith("-"):
            return text


@dataclass(frozen=True, slots=True)
class BrokerSecurity:
    """What a broker that requires SASL over TLS is configured with (``posttrain stack up
    --secure``). Its passwords end up in server.properties, which only its owner reads.

    Clients authenticate with SCRAM (``mechanism``): those users live in the metadata log and
    are made by the admin through the broker. The admin itself, which the broker also is to
    itself (transaction markers), is a PLAIN user declared here, so that a fresh broker has a
    first user without a password on any command line; the controller listener (loopback
    only) takes PLAIN too, since SCRAM users cannot guard the log that holds them."""

    keystore_pem: Path  # the broker's private key and certificate chain
    truststore_pem: Path  # the CA, to verify itself on the inter-broker listener
    mechanism: str
    admin_user: str
    admin_password: str = field(repr=False)
    controller_user: str
    controller_password: str = field(repr=False)


def _jaas(module: str, **options: str) -> str:
    fields = [f'{key}="{value}"' for key, value in options.items()]
    return " ".join([module, "required", *fields]) + ";"


def _security_lines(security: BrokerSecurity) -> list[str]:
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
    plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
    admin, controller = security.admin_user, security.controller_user
    return [
        "# SASL over TLS for clients (SCRAM) and the admin (PLAIN, also the broker to itself);",
        "# PLAIN on the loopback-only controller listener; every request authorized by ACLs.",
        f"listener.name.sasl_ssl.sasl.enabled.mechanisms={security.mechanism},PLAIN",
        f"listener.name.sasl_ssl.{security.mechanism.lower()}.sasl.jaas.config={_jaas(scram)}",
        "listener.name.sasl_ssl.plain.sasl.jaas.config="
        + _jaas(
            plain,
            username=admin,
            password=security.admin_password,
            **{f"user_{admin}": security.admin_password},
        ),
        "sasl.mechanism.inter.broker.protocol=PLAIN",
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        "listener.name.controller.plain.sasl.jaas.config="
        + _jaas(
            plain,
            username=controller,
            password=security.controller_password,
            **{f"user_{controller}": security.controller_password},
        ),
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={security.keystore_pem}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={security.truststore_pem}",
        "ssl.endpoint.identification.algorithm=https",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=false",
        f"super.users=User:{admin};User:{controller}",
    ]


# Segments of the coordinators' compacted topics (``render_server_properties``).
INTERNAL_TOPIC_SEGMENT_BYTES = 10 * 1024 * 1024


def render_server_properties(
    address: KafkaAddress, data_dir: Path, security: BrokerSecurity | None = None
) -> str:
    host = address.host
    client = "SASL_SSL" if security is not None else "PLAINTEXT"
    controller = "SASL_PLAINTEXT" if security is not None else "PLAINTEXT"
    lines = [
        "# Written by `posttrain stack up`; rewritten on every start.",
        "# One combined KRaft node: broker and controller in one process.",
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@{host}:{address.controller_port}",
        f"listeners={client}://{host}:{address.port},CONTROLLER://{host}:{address.controller_port}",
        f"advertised.listeners={client}://{host}:{address.port}",
        "controller.listener.names=CONTROLLER",
        f"inter.broker.listener.name={client}",
        f"listener.security.protocol.map=CONTROLLER:{controller},{client}:{client}",
        *(_security_lines(security) if security is not None else []),
        f"log.dirs={data_dir}",
        "num.partitions=1",
        # A single node can hold only one replica of the internal topics.
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        # Tests join groups constantly; the default 3 s delay would slow every one of them.
        "group.initial.rebalance.delay.ms=0",
        # A crashed service's partitions move to its replacement once its session expires:
        # allow sessions short enough for that to take seconds, not tens of seconds.
        "group.min.session.timeout.ms=1000",
        # Topics are declared in posttrain.events.topics and created by the project.
        "auto.create.topics.enable=false",
        # Every test run's namespace has transactional ids and groups of its own, whose
        # coordinators log each change of their state to compacted topics. Compaction works
        # on rolled segments only, and at the default 100 MB a segment of a developer's broker
        # rolls after a week: days of test runs had left 1.5 GB in __transaction_state, all
        # loaded into the broker's heap at each start. With 10 MB segments compaction keeps
        # the last record of each id and group as they accumulate.
        f"transaction.state.log.segment.bytes={INTERNAL_TOPIC_SEGMENT_BYTES}",
        f"offsets.topic.segment.bytes={INTERNAL_TOPIC_SEGMENT_BYTES}",
        "",
    ]
    return "\n".join(lines)


def served_address(server_properties: str) -> KafkaAddress | None:
    """The client address a rendered server.properties advertises (what a running broker that
    was started from it serves)."""
    for line in server_properties.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "advertised.listeners":
            for listener in value.split(","):
                if listener.strip().startswith(("PLAINTEXT://", "SASL_SSL://")):
                    return parse_bootstrap(listener.strip())
    return None


def render_log4j2(log_file: Path) -> str:
    """Kafka 4 logs through log4j2: everything to one file, nothing to the console.

    log4j2's own shutdown hook would stop logging while Kafka's hook is still shutting down;
    disabled so that the log shows the whole controlled shutdown."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by `posttrain stack up`. -->
<Configuration status="WARN" shutdownHook="disable">
  <Appenders>
    <File name="file" fileName="{log_file}" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="org.apache.kafka.controller" level="INFO"/>
    <Root level="INFO">
      <AppenderRef ref="file"/>
    </Root>
  </Loggers>
</Configuration>
"""


def render_postgresql_conf(target: DatabaseTarget, socket_dir: Path) -> str:
    """Included from postgresql.conf; durability settings (fsync, synchronous_commit) keep their
    defaults on purpose: tests claim data survives restarts."""
    return "\n".join(
        [
            "# Written by `posttrain stack up`; rewritten on every start.",
            f"listen_addresses = '{target.host}'",
            f"port = {target.port}",
            f"unix_socket_directories = '{socket_dir}'",
            "max_connections = 200",
            "shared_buffers = 256MB",
            "password_encryption = 'scram-sha-256'",
            "",
        ]
    )


def render_pg_hba() -> str:
    return "\n".join(
        [
            "# Written by `posttrain stack up`.",
            "# The socket lives inside the private data dir: only its owner (and root) reach it.",
            "local   all   all                  trust",
            "host    all   all   127.0.0.1/32   scram-sha-256",
            "host    all   all   ::1/128        scram-sha-256",
            "",
        ]
    )
