"""Where the broker is and which namespace of topics to use, from the environment.

| variable                  | default                          |
|---------------------------|----------------------------------|
| KAFKA_BOOTSTRAP_SERVERS   | 127.0.0.1:9092 (the local stack) |
| POSTTRAIN_TOPIC_NAMESPACE | (none)                           |
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from posttrain.events.topics import Topic, physical_name

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


class KafkaEnvironment(BaseSettings):
    """The two variables, read by pydantic-settings; ``KafkaSettings.from_env`` is its one user."""

    # An empty variable counts as unset, as in ``posttrain.service.settings``.
    model_config = SettingsConfigDict(
        extra="ignore", frozen=True, env_ignore_empty=True, populate_by_name=True
    )

    bootstrap_servers: str = Field(
        default=DEFAULT_BOOTSTRAP, validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS")
    )
    namespace: str = Field(default="", validation_alias=AliasChoices("POSTTRAIN_TOPIC_NAMESPACE"))


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """``KAFKA_BOOTSTRAP_SERVERS`` names the cluster; ``POSTTRAIN_TOPIC_NAMESPACE`` (empty by
    default) prefixes every topic so that environments and test runs share a broker safely."""

    # A plain frozen dataclass rather than the settings model itself: callers derive one from
    # another with ``dataclasses.replace`` (a test namespace, an unreachable broker).
    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    namespace: str = ""
    client_id: str = "posttrain"

    @classmethod
    def from_env(cls, *, client_id: str = "posttrain") -> KafkaSettings:
        """The broker and namespace from the environment (``KafkaEnvironment``)."""
        env = KafkaEnvironment()
        return cls(
            bootstrap_servers=env.bootstrap_servers, namespace=env.namespace, client_id=client_id
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
