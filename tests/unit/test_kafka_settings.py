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
