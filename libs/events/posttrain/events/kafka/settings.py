"""Where the broker is and which namespace of topics to use, from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

from posttrain.events.topics import Topic, physical_name

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """``KAFKA_BOOTSTRAP_SERVERS`` names the cluster; ``POSTTRAIN_TOPIC_NAMESPACE`` (empty by
    default) prefixes every topic so that environments and test runs share a broker safely."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    namespace: str = ""
    client_id: str = "posttrain"

    @classmethod
    def from_env(cls, *, client_id: str = "posttrain") -> KafkaSettings:
        return cls(
            bootstrap_servers=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP),
            namespace=os.environ.get("POSTTRAIN_TOPIC_NAMESPACE", ""),
            client_id=client_id,
        )

    def librdkafka_config(self) -> dict[str, str]:
        """The same connection for a librdkafka client (``blocking.BlockingProducer``)."""
        return {"bootstrap.servers": self.bootstrap_servers, "client.id": self.client_id}

    def topic(self, topic: Topic | str) -> str:
        """The broker-side name of a logical topic."""
        return physical_name(topic, self.namespace)

    def group(self, group_id: str) -> str:
        """Consumer groups and transactional ids are namespaced like topics."""
        return f"{self.namespace}.{group_id}" if self.namespace else group_id
