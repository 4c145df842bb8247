"""deploy/compose: the file is valid Compose (the Compose Specification's schema), Kafka runs in
KRaft mode and the services reach it on the listener it advertises to them, and nothing starts
before the prepare step has made the topics and tables."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest

from tests.unit.deploy.manifests import SCHEMAS, compose, compose_containers


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    with (SCHEMAS / "compose-spec.json").open(encoding="utf-8") as f:
        return jsonschema.Draft7Validator(json.load(f))


def _errors(validator: jsonschema.Draft7Validator, document: dict[str, Any]) -> list[str]:
    return [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(document)]


def test_the_file_is_valid_compose(validator):
    assert _errors(validator, compose()) == []


def test_the_schema_refuses_a_misspelt_key(validator):
    document = copy.deepcopy(compose())
    document["services"]["gateway"]["helthcheck"] = document["services"]["gateway"]["healthcheck"]
    assert _errors(validator, document)


def _listeners(value: str) -> dict[str, str]:
    """``NAME://host:port,...`` as {NAME: host:port}."""
    return dict(item.split("://", 1) for item in value.split(","))


def test_kafka_runs_in_kraft_mode_and_the_services_use_its_internal_listener():
    kafka = compose()["services"]["kafka"]["environment"]
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any(name.startswith("KAFKA_ZOOKEEPER") for name in kafka)
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    advertised = _listeners(kafka["KAFKA_ADVERTISED_LISTENERS"])
    internal = advertised[kafka["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    for container in compose_containers():
        assert container.env["KAFKA_BOOTSTRAP_SERVERS"] == internal, container.where


def test_the_services_reach_the_database_compose_starts():
    postgres = compose()["services"]["postgres"]["environment"]
    for container in compose_containers():
        url = container.env["DATABASE_URL"] or ""
        assert url.startswith(f"postgresql://{postgres['POSTGRES_USER']}:"), container.where
        assert url.endswith(f"@postgres:5432/{postgres['POSTGRES_DB']}"), container.where


def test_every_service_waits_for_the_prepare_step():
    services = compose()["services"]
    for container in compose_containers():
        name = container.where.removeprefix("compose/")
        if name == "prepare":
            depends = services[name]["depends_on"]
            assert depends == {
                "kafka": {"condition": "service_healthy"},
                "postgres": {"condition": "service_healthy"},
            }
        else:
            assert services[name]["depends_on"] == {
                "prepare": {"condition": "service_completed_successfully"}
            }
