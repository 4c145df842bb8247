"""Where the broker is, which namespace of topics to use and how to authenticate, from the
environment.

| variable                  | default                                                        |
|---------------------------|----------------------------------------------------------------|
| KAFKA_BOOTSTRAP_SERVERS   | 127.0.0.1:9092 (the local stack)                               |
| POSTTRAIN_TOPIC_NAMESPACE | (none)                                                         |
| KAFKA_SECURITY_PROTOCOL   | PLAINTEXT; also SSL, SASL_SSL, SASL_PLAINTEXT                  |
| KAFKA_SASL_MECHANISM      | SCRAM-SHA-512 with SASL_*; also SCRAM-SHA-256, PLAIN           |
| KAFKA_SASL_USERNAME       | (none; required with SASL_*)                                   |
| KAFKA_SASL_PASSWORD       | (none) the password itself, or ...                             |
| KAFKA_SASL_PASSWORD_FILE  | ... a file holding it (one of the two is required with SASL_*) |
| KAFKA_SSL_CAFILE          | (none: the system's CAs) the CA of the broker's certificate    |

Every Kafka client of the project is made from ``KafkaSettings``: aiokafka clients take
``client_options()``, librdkafka ones ``librdkafka_config()``, Faust ``faust_credentials()``, and a
child process that must reach the same broker as the same principal gets ``environment()``. A
password never travels on a command line.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from posttrain.events.topics import Topic, physical_name

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
DEFAULT_MECHANISM = "SCRAM-SHA-512"


class KafkaEnvironment(BaseSettings):
    """The variables, read by pydantic-settings; ``KafkaSettings.from_env`` makes the client
    settings of them (and the local stack reads the broker's address here)."""

    # An empty variable counts as unset, as in ``posttrain.service.settings``.
    model_config = SettingsConfigDict(
        extra="ignore", frozen=True, env_ignore_empty=True, populate_by_name=True
    )

    bootstrap_servers: str = Field(
        default=DEFAULT_BOOTSTRAP, validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS")
    )
    namespace: str = Field(default="", validation_alias=AliasChoices("POSTTRAIN_TOPIC_NAMESPACE"))
    security_protocol: str = Field(
        default="PLAINTEXT", validation_alias=AliasChoices("KAFKA_SECURITY_PROTOCOL")
    )
    sasl_mechanism: str = Field(default="", validation_alias=AliasChoices("KAFKA_SASL_MECHANISM"))
    sasl_username: str = Field(default="", validation_alias=AliasChoices("KAFKA_SASL_USERNAME"))
    sasl_password: str = Field(
        default="", repr=False, validation_alias=AliasChoices("KAFKA_SASL_PASSWORD")
    )
    sasl_password_file: str = Field(
        default="", validation_alias=AliasChoices("KAFKA_SASL_PASSWORD_FILE")
    )
    ssl_cafile: str = Field(default="", validation_alias=AliasChoices("KAFKA_SSL_CAFILE"))

    @model_validator(mode="after")
    def _consistent(self) -> KafkaEnvironment:
        # The variables' own names in every message: that is what a user sets.
        protocol = self.security_protocol.upper()
        if protocol not in PROTOCOLS:
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL: expected one of {', '.join(PROTOCOLS)}, "
                f"got {self.security_protocol!r}"
            )
        if self.sasl_mechanism and self.sasl_mechanism.upper() not in MECHANISMS:
            raise ValueError(
                f"KAFKA_SASL_MECHANISM: expected one of {', '.join(MECHANISMS)}, "
                f"got {self.sasl_mechanism!r}"
            )
        if self.sasl_password and self.sasl_password_file:
            raise ValueError(
                "KAFKA_SASL_PASSWORD and KAFKA_SASL_PASSWORD_FILE are both set: set one"
            )
        if protocol.startswith("SASL_"):
            if not self.sasl_username:
                raise ValueError(f"KAFKA_SASL_USERNAME: required with {protocol}")
            if not (self.sasl_password or self.sasl_password_file):
                raise ValueError(
                    f"KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE: required with {protocol}"
                )
        if self.ssl_cafile and not Path(self.ssl_cafile).is_file():
            raise ValueError(f"KAFKA_SSL_CAFILE: no such file {self.ssl_cafile!r}")
        if self.sasl_password_file and not Path(self.sasl_password_file).is_file():
            raise ValueError(f"KAFKA_SASL_PASSWORD_FILE: no such file {self.sasl_password_file!r}")
        return self


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """``KAFKA_BOOTSTRAP_SERVERS`` names the cluster; ``POSTTRAIN_TOPIC_NAMESPACE`` (empty by
    default) prefixes every topic so that environments and test runs share a broker safely; the
    security fields say how to reach a broker that requires TLS and SASL (PLAINTEXT: it does
    not)."""

    # A plain frozen dataclass rather than the settings model itself: callers derive one from
    # another with ``dataclasses.replace`` (a test namespace, an unreachable broker, a principal).
    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    namespace: str = ""
    client_id: str = "posttrain"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    # Kept out of repr: settings are logged and put in exceptions.
    sasl_password: str = field(default="", repr=False)
    # Where the password was read from, if from a file: handed on to child processes instead of
    # the password itself.
    sasl_password_file: str = ""
    ssl_cafile: str = ""

    @classmethod
    def from_env(cls, *, client_id: str = "posttrain") -> KafkaSettings:
        """The broker, namespace and credentials from the environment (``KafkaEnvironment``);
        a bad or incomplete combination raises ``pydantic.ValidationError`` naming the
        variable."""
        env = KafkaEnvironment()
        password = env.sasl_password
        if env.sasl_password_file:
            # A trailing newline is how most tools write a secret file; it is not part of it.
            password = Path(env.sasl_password_file).read_text().rstrip("\r\n")
        protocol = env.security_protocol.upper()
        mechanism = env.sasl_mechanism.upper()
        if protocol.startswith("SASL_") and not mechanism:
            mechanism = DEFAULT_MECHANISM
        return cls(
            bootstrap_servers=env.bootstrap_servers,
            namespace=env.namespace,
            client_id=client_id,
            security_protocol=protocol,
            sasl_mechanism=mechanism,
            sasl_username=env.sasl_username,
            sasl_password=password,
            sasl_password_file=env.sasl_password_file,
            ssl_cafile=env.ssl_cafile,
        )

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """A context that verifies the broker against ``ssl_cafile`` (else the system's CAs),
        hostname included; None without TLS."""
        if not self.uses_tls:
            return None
        return ssl.create_default_context(cafile=self.ssl_cafile or None)

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client (producer, consumer, admin, low-level
        client): the bootstrap servers and the security settings. Every aiokafka client of the
        project is made with them."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.uses_tls:
            options["ssl_context"] = self.ssl_context()
        if self.uses_sasl:
            options["sasl_mechanism"] = self.sasl_mechanism or DEFAULT_MECHANISM
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password
        return options

    def librdkafka_config(self) -> dict[str, str]:
        """The same connection for a librdkafka client (``blocking.BlockingProducer``, admin)."""
        config = {"bootstrap.servers": self.bootstrap_servers, "client.id": self.client_id}
        if self.security_protocol != "PLAINTEXT":
            config["security.protocol"] = self.security_protocol.lower()
        if self.uses_tls and self.ssl_cafile:
            config["ssl.ca.location"] = self.ssl_cafile
        if self.uses_sasl:
            config["sasl.mechanisms"] = self.sasl_mechanism or DEFAULT_MECHANISM
            config["sasl.username"] = self.sasl_username
            config["sasl.password"] = self.sasl_password
        return config

    def faust_credentials(self) -> Any:
        """``broker_credentials`` for a Faust app (None: plaintext). Imported here, lazily, so
        that ``posttrain.events`` does not depend on Faust."""
        if not (self.uses_sasl or self.uses_tls):
            return None
        from faust.auth import SASLCredentials, SSLCredentials

        if not self.uses_sasl:
            return SSLCredentials(self.ssl_context())
        return SASLCredentials(
            username=self.sasl_username,
            password=self.sasl_password,
            ssl_context=self.ssl_context(),
            mechanism=self.sasl_mechanism or DEFAULT_MECHANISM,
        )

    def environment(self) -> dict[str, str]:
        """The variables from which ``from_env`` in a child process rebuilds these settings
        (the child's own client id aside). The password goes as its file when it came from one.
        Variables a PLAINTEXT setup does not need are set empty, which counts as unset, so that
        nothing inherited from the parent's environment contradicts them."""
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "POSTTRAIN_TOPIC_NAMESPACE": self.namespace,
            "KAFKA_SECURITY_PROTOCOL": self.security_protocol,
            "KAFKA_SASL_MECHANISM": self.sasl_mechanism if self.uses_sasl else "",
            "KAFKA_SASL_USERNAME": self.sasl_username if self.uses_sasl else "",
            "KAFKA_SASL_PASSWORD": "",
            "KAFKA_SASL_PASSWORD_FILE": "",
            "KAFKA_SSL_CAFILE": self.ssl_cafile if self.uses_tls else "",
        }
        if self.uses_sasl:
            if self.sasl_password_file:
                env["KAFKA_SASL_PASSWORD_FILE"] = self.sasl_password_file
            else:
                env["KAFKA_SASL_PASSWORD"] = self.sasl_password
        return env

    def topic(self, topic: Topic | str) -> str:
        """The broker-side name of a logical topic."""
        return physical_name(topic, self.namespace)

    def group(self, group_id: str) -> str:
        """Consumer groups and transactional ids are namespaced like topics."""
        return f"{self.namespace}.{group_id}" if self.namespace else group_id
