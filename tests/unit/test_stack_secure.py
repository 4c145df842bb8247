"""The secured broker's configuration (``posttrain stack up --secure``): pure rendering, and the
secrets and settings the stack makes for each principal (files only, no broker)."""

from __future__ import annotations

import stat
from pathlib import Path

from posttrain.events.access import Principal
from posttrain.events.kafka.settings import KafkaEnvironment
from posttrain.stack import secure
from posttrain.stack.config import (
    BrokerSecurity,
    KafkaAddress,
    render_server_properties,
    served_address,
)
from posttrain.stack.paths import StackSettings


def _security() -> BrokerSecurity:
    return BrokerSecurity(
        keystore_pem=Path("/s/broker.pem"),
        truststore_pem=Path("/s/ca.pem"),
        mechanism="SCRAM-SHA-512",
        admin_user="admin",
        admin_password="adminpw",
        controller_user="controller",
        controller_password="ctlpw",
    )


def test_a_secured_broker_takes_only_sasl_ssl_and_authorizes_every_request():
    text = render_server_properties(KafkaAddress("127.0.0.1", 9192), Path("/d"), _security())
    lines = set(text.splitlines())
    assert "listeners=SASL_SSL://127.0.0.1:9192,CONTROLLER://127.0.0.1:9193" in lines
    assert "listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,SASL_SSL:SASL_SSL" in lines
    assert "inter.broker.listener.name=SASL_SSL" in lines
    assert "listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN" in lines
    assert "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer" in lines
    assert "allow.everyone.if.no.acl.found=false" in lines
    assert "super.users=User:admin;User:controller" in lines
    assert not any(line.startswith("listeners=PLAINTEXT") for line in lines)
    assert served_address(text) == KafkaAddress("127.0.0.1", 9192)
    # The repr of the settings, which may be logged, holds no password.
    assert "adminpw" not in repr(_security()) and "ctlpw" not in repr(_security())


def test_the_plaintext_broker_is_rendered_as_before():
    text = render_server_properties(KafkaAddress("127.0.0.1", 9092), Path("/d"))
    assert "listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093" in text
    assert "sasl" not in text and "authorizer" not in text


def test_secrets_are_private_and_env_files_name_the_password_file(tmp_path, monkeypatch):
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    settings = StackSettings(posttrain_home=tmp_path / "home", stack_dir=tmp_path / "st")
    layout = secure.secure_layout(settings)
    address = secure.secure_address(KafkaEnvironment())
    assert address == KafkaAddress("127.0.0.1", 9192)
    assert layout.root == tmp_path / "st" / "secure"
    assert layout.paths.kafka_data == layout.root / "kafka-data"
    secure.prepare(layout, address)
    files = secure.write_env_files(layout, address, "ns")
    assert {f.name for f in files} == {f"{p.value}.env" for p in Principal}
    for path in [*files, layout.broker_pem, layout.ca_key, layout.password_file("agent")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    agent = dict(line.split("=", 1) for line in layout.env_file("agent").read_text().splitlines())
    assert agent == {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9192",
        "POSTTRAIN_TOPIC_NAMESPACE": "ns",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "agent",
        "KAFKA_SASL_PASSWORD_FILE": str(layout.password_file("agent")),
        "KAFKA_SSL_CAFILE": str(layout.ca_cert),
    }
    password = layout.password_file("agent").read_text().strip()
    assert password and password not in layout.env_file("agent").read_text()
    # Made once: a second preparation keeps the CA and the passwords.
    ca = layout.ca_cert.read_bytes()
    secure.prepare(layout, address)
    assert layout.ca_cert.read_bytes() == ca
    assert layout.password_file("agent").read_text().strip() == password
