"""What a stage process is given of the agent's Kafka settings: the broker, the namespace and
the credentials, the password as its file, and nothing in the spec file."""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.events.kafka import KafkaSettings
from posttrain.trainer_agent.core.decide import Start
from posttrain.trainer_agent.core.state import Entry, Status
from posttrain.trainer_agent.stage_spec import stage_env, stage_spec

RUN = {"job_id": "j", "pipeline_id": "p", "stage": "s", "attempt": 1}


def _entry() -> Entry:
    return Entry(command_id="p:s:1", run=RUN, status=Status.RUNNING, attempt_dir="/w/a")


def test_a_stage_connects_as_the_agents_principal_without_its_password_in_view(monkeypatch):
    # A variable the agent's own environment holds must not contradict its settings.
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "stale")
    settings = KafkaSettings(
        bootstrap_servers="broker:9192",
        namespace="ns",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="agent",
        sasl_password="s3cret",
        sasl_password_file="/secrets/agent.password",
        ssl_cafile="/secrets/ca.pem",
    )
    env = stage_env(_entry(), (), agent_id="a-1", work_dir=Path("/w"), settings=settings)
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "broker:9192"
    assert env["POSTTRAIN_TOPIC_NAMESPACE"] == "ns"
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["KAFKA_SASL_USERNAME"] == "agent"
    assert env["KAFKA_SASL_PASSWORD_FILE"] == "/secrets/agent.password"
    assert env["KAFKA_SASL_PASSWORD"] == ""  # empty counts as unset
    assert env["KAFKA_SSL_CAFILE"] == "/secrets/ca.pem"
    start = Start(command_id="p:s:1", number=1, gpu_ids=(), control_offset=0)
    spec = stage_spec(_entry(), start, Path("/w"), settings)
    assert "s3cret" not in json.dumps(spec) and "s3cret" not in env.values()
