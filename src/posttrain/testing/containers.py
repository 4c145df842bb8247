"""Kafka (one KRaft node, the apache/kafka image of the local stack's version) and PostgreSQL
in Docker containers with testcontainers, for a test run with ``POSTTRAIN_TEST_STACK=containers``.

`containers_stack` starts both, prepares them as `posttrain stack up` prepares the local stack
(the declared topics, group and transaction coordinators, migrations of the default database),
and yields the two addresses the suite reads (``KAFKA_BOOTSTRAP_SERVERS``, ``DATABASE_URL``).
Only a machine with a Docker engine runs this module; `posttrain.testing.stack_choice` decides
whether it is used.
"""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Self

from testcontainers.community.postgres import PostgresContainer
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import LogMessageWaitStrategy

from posttrain.stack.config import INTERNAL_TOPIC_SEGMENT_BYTES, new_cluster_id
from posttrain.stack.paths import KAFKA_VERSION

KAFKA_IMAGE = f"apache/kafka:{KAFKA_VERSION}"
POSTGRES_IMAGE = "postgres:15"  # the major version the local stack runs (Debian's)
KAFKA_START_TIMEOUT_S = 120
PREPARE_TIMEOUT_S = 120.0
CLIENT_PORT = 9092  # inside the container; Docker maps it to a free port of the host


@dataclass(frozen=True)
class StackAddresses:
    """Where the suite finds the broker and the database server."""

    bootstrap_servers: str
    database_url: str

    def environment(self) -> dict[str, str]:
        """The variables every settings object and every started service reads."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "DATABASE_URL": self.database_url,
        }


def kafka_environment() -> dict[str, str]:
    """The broker's settings as the image reads them (``KAFKA_X_Y`` is ``x.y``): the local
    stack's (`posttrain.stack.config.render_server_properties`), with a second listener for
    the broker's own use, since clients reach it through a port Docker maps."""
    return {
        "CLUSTER_ID": new_cluster_id(),
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_LISTENERS": (
            f"PLAINTEXT://0.0.0.0:{CLIENT_PORT},BROKER://localhost:19092,"
            "CONTROLLER://localhost:9093"
        ),
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": (
            "PLAINTEXT:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT"
        ),
        "KAFKA_INTER_BROKER_LISTENER_NAME": "BROKER",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_NUM_PARTITIONS": "1",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS": "1000",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
        "KAFKA_TRANSACTION_STATE_LOG_SEGMENT_BYTES": str(INTERNAL_TOPIC_SEGMENT_BYTES),
        "KAFKA_OFFSETS_TOPIC_SEGMENT_BYTES": str(INTERNAL_TOPIC_SEGMENT_BYTES),
    }


def _host(container: DockerContainer) -> str:
    """The address the test process reaches a container's mapped ports at. "localhost" may
    resolve to ::1 first, where Docker need not listen: the local stack's rule, 127.0.0.1."""
    host = container.get_container_host_ip()
    return "127.0.0.1" if host == "localhost" else host


class KRaftKafkaContainer(DockerContainer):
    """One combined broker and controller, configured by `kafka_environment`.

    A client must be told the address Docker mapped the client port to, which is known only
    once the container runs: the container waits for a start script, written after the start,
    that sets the advertised listener and hands over to the image's own entry point."""

    _SCRIPT = "/tmp/posttrain-kafka-start.sh"
    _READY = r"Kafka Server started"

    def __init__(self, image: str = KAFKA_IMAGE) -> None:
        super().__init__(image)
        self.with_exposed_ports(CLIENT_PORT)
        self.with_envs(**kafka_environment())
        self.with_command(
            ["sh", "-c", f"while [ ! -f {self._SCRIPT} ]; do sleep 0.1; done; . {self._SCRIPT}"]
        )

    def bootstrap_servers(self) -> str:
        """The client address, as seen from the test process."""
        return f"{_host(self)}:{self.get_exposed_port(CLIENT_PORT)}"

    def start(self) -> Self:
        super().start()
        script = (
            f"export KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://{self.bootstrap_servers()},"
            "BROKER://localhost:19092\nexec /etc/kafka/docker/run\n"
        ).encode()
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            entry = tarfile.TarInfo(self._SCRIPT.rsplit("/", 1)[1])
            entry.size = len(script)
            entry.mode = 0o644
            tar.addfile(entry, io.BytesIO(script))
        self.get_wrapped_container().put_archive("/tmp", archive.getvalue())
        ready = LogMessageWaitStrategy(self._READY)
        ready.with_startup_timeout(KAFKA_START_TIMEOUT_S)
        ready.wait_until_ready(self)
        return self


async def _prepare(addresses: StackAddresses) -> None:
    """What `posttrain stack up` does once its components run: topics and coordinators ready
    for every client, the default database migrated."""
    from posttrain.events.kafka.admin import await_coordinators, ensure_topics
    from posttrain.events.kafka.settings import KafkaSettings
    from posttrain.service.migrate import apply_migrations

    settings = KafkaSettings(bootstrap_servers=addresses.bootstrap_servers, client_id="posttrain")
    await ensure_topics(settings)
    await await_coordinators(settings)
    await apply_migrations(addresses.database_url)


@contextmanager
def containers_stack() -> Iterator[StackAddresses]:
    """Start Kafka and PostgreSQL in containers, prepared; both are removed on exit (and by
    testcontainers' reaper if this process dies first)."""
    with ExitStack() as stack:
        kafka = stack.enter_context(KRaftKafkaContainer())
        postgres = stack.enter_context(
            PostgresContainer(
                POSTGRES_IMAGE,
                username="posttrain",
                password="posttrain",
                dbname="posttrain",
                driver=None,
            )
        )
        addresses = StackAddresses(
            bootstrap_servers=kafka.bootstrap_servers(),
            database_url=postgres.get_connection_url(host=_host(postgres)),
        )
        asyncio.run(asyncio.wait_for(_prepare(addresses), PREPARE_TIMEOUT_S))
        yield addresses
