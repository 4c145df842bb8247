"""KafkaSettings.from_env: the broker and topic namespace from their variables, through
pydantic-settings, with the dataclass API (keywords, ``dataclasses.replace``) unchanged."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, replace

import pytest

from posttrain.events.kafka.settings import DEFAULT_BOOTSTRAP, KafkaSettings


def test_defaults_without_the_variables(monkeypatch):
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("POSTTRAIN_TOPIC_NAMESPACE", raising=False)
    settings = KafkaSettings.from_env()
    assert settings == KafkaSettings(bootstrap_servers=DEFAULT_BOOTSTRAP, namespace="")
    assert settings.client_id == "posttrain"
    assert settings.topic("runs.events") == "runs.events"
    assert settings.group("orchestrator") == "orchestrator"


def test_the_variables_keep_their_names(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-0:9093,broker-1:9093")
    monkeypatch.setenv("POSTTRAIN_TOPIC_NAMESPACE", "staging")
    settings = KafkaSettings.from_env(client_id="orchestrator")
    assert settings.bootstrap_servers == "broker-0:9093,broker-1:9093"
    assert settings.namespace == "staging"
    assert settings.client_id == "orchestrator"
    assert settings.group("orchestrator") == "staging.orchestrator"
    assert settings.librdkafka_config() == {
        "bootstrap.servers": "broker-0:9093,broker-1:9093",
        "client.id": "orchestrator",
    }


def test_an_empty_variable_counts_as_unset(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "")
    monkeypatch.setenv("POSTTRAIN_TOPIC_NAMESPACE", "")
    settings = KafkaSettings.from_env()
    assert settings.bootstrap_servers == DEFAULT_BOOTSTRAP
    assert settings.namespace == ""


def test_replace_derives_a_frozen_copy(monkeypatch):
    monkeypatch.setenv("POSTTRAIN_TOPIC_NAMESPACE", "base")
    base = KafkaSettings.from_env()
    derived = replace(base, namespace="test-1")
    assert derived.namespace == "test-1"
    assert derived.bootstrap_servers == base.bootstrap_servers
    assert base.namespace == "base"
    with pytest.raises(FrozenInstanceError):
        derived.namespace = "other"  # type: ignore[misc]


def _clear_security(monkeypatch):
    for name in (
        "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_SASL_MECHANISM",
        "KAFKA_SASL_USERNAME",
        "KAFKA_SASL_PASSWORD",
        "KAFKA_SASL_PASSWORD_FILE",
        "KAFKA_SSL_CAFILE",
    ):
        monkeypatch.delenv(name, raising=False)


def test_sasl_ssl_from_the_variables_with_the_password_from_a_file(monkeypatch, tmp_path):
    _clear_security(monkeypatch)
    secret, ca = tmp_path / "agent.password", tmp_path / "ca.pem"
    secret.write_text("s3cret\n")
    ca.write_text("")  # read only by an SSL context; its presence is what is checked here
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker:9192")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "agent")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("KAFKA_SSL_CAFILE", str(ca))
    settings = KafkaSettings.from_env(client_id="agent-1")
    assert settings.security_protocol == "SASL_SSL"
    assert settings.sasl_mechanism == "SCRAM-SHA-512"  # the default with SASL
    assert settings.sasl_password == "s3cret"  # the file's trailing newline is not part of it
    assert "s3cret" not in repr(settings)
    assert settings.librdkafka_config() == {
        "bootstrap.servers": "broker:9192",
        "client.id": "agent-1",
        "security.protocol": "sasl_ssl",
        "ssl.ca.location": str(ca),
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "agent",
        "sasl.password": "s3cret",
    }
    # A child process is handed the password's file, never the password.
    env = settings.environment()
    assert env["KAFKA_SASL_PASSWORD_FILE"] == str(secret)
    assert env["KAFKA_SASL_PASSWORD"] == ""
    assert "s3cret" not in env.values()


def test_aiokafka_options_carry_the_credentials(monkeypatch):
    settings = KafkaSettings(
        bootstrap_servers="broker:9192",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="ingest",
        sasl_password="pw",
    )
    assert settings.client_options() == {
        "bootstrap_servers": "broker:9192",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "ingest",
        "sasl_plain_password": "pw",
    }
    plain = KafkaSettings().client_options()
    assert plain == {"bootstrap_servers": DEFAULT_BOOTSTRAP, "security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_PASSWORD": "x"}, "USERNAME"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "a"}, "PASSWORD"),
        ({"KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM"),
        ({"KAFKA_SASL_PASSWORD": "x", "KAFKA_SASL_PASSWORD_FILE": "/etc/hostname"}, "both"),
        ({"KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "KAFKA_SSL_CAFILE"),
    ],
)
def test_a_bad_combination_is_refused_naming_the_variable(monkeypatch, variables, named):
    _clear_security(monkeypatch)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=named):
        KafkaSettings.from_env()
