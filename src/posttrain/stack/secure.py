"""The secured local broker (``posttrain stack up --secure``): SASL (SCRAM-SHA-512) over TLS,
one principal per service, ACLs from ``posttrain.events.access``.

Its own state directory (``$POSTTRAIN_STACK_DIR`` or ``$POSTTRAIN_HOME``, then ``secure/``) and
its own ports (127.0.0.1:9192, controller 9193, unless KAFKA_BOOTSTRAP_SERVERS names others), so
it runs beside the plaintext broker. Made here, once, and kept: a CA and the broker's
certificate (``secrets/ca.pem`` is what clients trust), a password per principal
(``secrets/<principal>.password``, mode 600) and, per principal, the environment a service
needs (``secrets/<principal>.env``: KAFKA_* variables naming the password file, never the
password).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from posttrain.events.access import Principal, acl_entries
from posttrain.events.kafka.settings import KafkaEnvironment, KafkaSettings
from posttrain.stack.component import StackError
from posttrain.stack.config import BrokerSecurity, KafkaAddress, parse_bootstrap
from posttrain.stack.paths import StackPaths, StackSettings, stack_paths

NAME = "kafka-secure"
DEFAULT_SECURE_BOOTSTRAP = "127.0.0.1:9192"
MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192
CONTROLLER_USER = "controller"
CERT_DAYS = 825


@dataclass(frozen=True, slots=True)
class SecureLayout:
    """Where the secured broker keeps its configuration, data and secrets."""

    root: Path
    paths: StackPaths  # the broker's config, data, log and pid under ``root``
    secrets: Path

    @property
    def ca_cert(self) -> Path:
        return self.secrets / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.secrets / "ca-key.pem"

    @property
    def broker_pem(self) -> Path:
        return self.secrets / "broker.pem"

    def password_file(self, user: str) -> Path:
        return self.secrets / f"{user}.password"

    def env_file(self, user: str) -> Path:
        return self.secrets / f"{user}.env"


def secure_layout(settings: StackSettings | None = None) -> SecureLayout:
    """The secure broker's state: ``secure`` under the plain stack's state directory
    (``settings``: read from the environment when None)."""
    settings = StackSettings() if settings is None else settings
    root = (settings.stack_dir or settings.posttrain_home) / "secure"
    paths = stack_paths(settings.model_copy(update={"stack_dir": root}))
    return SecureLayout(root=root, paths=paths, secrets=root / "secrets")


def secure_address(kafka: KafkaEnvironment | None = None) -> KafkaAddress:
    """KAFKA_BOOTSTRAP_SERVERS when set (``kafka``: read from the environment when None), else
    127.0.0.1:9192 (beside the plaintext 9092)."""
    kafka = KafkaEnvironment() if kafka is None else kafka
    given = "bootstrap_servers" in kafka.model_fields_set
    return parse_bootstrap(kafka.bootstrap_servers if given else DEFAULT_SECURE_BOOTSTRAP)


# --- secrets --------------------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def password(layout: SecureLayout, user: str) -> str:
    """The user's password, made on first use and kept in its file."""
    path = layout.password_file(user)
    if not path.exists():
        _write_private(path, (secrets.token_urlsafe(24) + "\n").encode())
    return path.read_text().strip()


def _certificates(layout: SecureLayout, host: str) -> None:
    """A CA (kept, so clients keep trusting it) and the broker's certificate for 127.0.0.1,
    ::1, localhost and ``host``, remade when ``host`` is new."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    marker = layout.secrets / "broker.host"
    if layout.broker_pem.exists() and marker.exists() and marker.read_text().strip() == host:
        return
    now = datetime.datetime.now(datetime.UTC)
    until = now + datetime.timedelta(days=CERT_DAYS)
    if layout.ca_cert.exists() and layout.ca_key.exists():
        ca_key = serialization.load_pem_private_key(layout.ca_key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(layout.ca_cert.read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "posttrain local CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(
            layout.ca_key,
            ca_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        layout.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for ip in {"127.0.0.1", "::1", host}:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            names.append(x509.DNSName(ip))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "posttrain broker")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    # Kafka's PEM key store: the private key (PKCS#8) then the chain, in one file.
    _write_private(
        layout.broker_pem,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + cert.public_bytes(serialization.Encoding.PEM)
        + ca_cert.public_bytes(serialization.Encoding.PEM),
    )
    marker.write_text(host + "\n")


def prepare(layout: SecureLayout, address: KafkaAddress) -> BrokerSecurity:
    """Certificates and the broker's own passwords, made once; the broker's configuration."""
    try:
        _certificates(layout, address.host)
    except ImportError as exc:
        raise StackError(NAME, f"the cryptography package is needed: {exc}") from exc
    return BrokerSecurity(
        keystore_pem=layout.broker_pem,
        truststore_pem=layout.ca_cert,
        mechanism=MECHANISM,
        admin_user=Principal.ADMIN.value,
        admin_password=password(layout, Principal.ADMIN.value),
        controller_user=CONTROLLER_USER,
        controller_password=password(layout, CONTROLLER_USER),
    )


# --- principals -----------------------------------------------------------------------------


def principal_settings(
    layout: SecureLayout, address: KafkaAddress, user: str, namespace: str = ""
) -> KafkaSettings:
    """How ``user`` connects: SCRAM for the services, PLAIN for the admin (see
    ``BrokerSecurity``), TLS verified against the local CA."""
    return KafkaSettings(
        bootstrap_servers=str(address),
        namespace=namespace,
        client_id=f"posttrain-{user}",
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN" if user == Principal.ADMIN.value else MECHANISM,
        sasl_username=user,
        sasl_password=password(layout, user),
        sasl_password_file=str(layout.password_file(user)),
        ssl_cafile=str(layout.ca_cert),
    )


def write_env_files(layout: SecureLayout, address: KafkaAddress, namespace: str) -> list[Path]:
    """``secrets/<principal>.env`` per principal: ``set -a; . FILE; set +a`` before starting
    the service. They name the password file; the password itself stays in it."""
    written = []
    for principal in Principal:
        settings = principal_settings(layout, address, principal.value, namespace)
        env = settings.environment()
        text = "".join(f"{key}={value}\n" for key, value in env.items() if value)
        _write_private(layout.env_file(principal.value), text.encode())
        written.append(layout.env_file(principal.value))
    return written


def apply_users_and_acls(layout: SecureLayout, address: KafkaAddress, namespace: str) -> str:
    """Create (or reset to their files' passwords) the SCRAM user of every service principal
    and add the ACLs of ``posttrain.events.access`` for ``namespace``; as the admin."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialAlteration,
        UserScramCredentialUpsertion,
    )

    admin_settings = principal_settings(layout, address, Principal.ADMIN.value, namespace)
    admin = AdminClient({**admin_settings.librdkafka_config(), "socket.timeout.ms": 10000})
    users = [p.value for p in Principal if p is not Principal.ADMIN]
    upserts: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(
            user,
            ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS),
            password(layout, user).encode(),
        )
        for user in users
    ]
    bindings = [
        AclBinding(
            ResourceType[entry.resource.value],
            entry.name,
            ResourcePatternType.PREFIXED if entry.prefixed else ResourcePatternType.LITERAL,
            f"User:{entry.principal}",
            "*",
            AclOperation[entry.operation.value],
            AclPermissionType.ALLOW,
        )
        for entry in acl_entries(namespace)
    ]
    try:
        for future in admin.alter_user_scram_credentials(upserts, request_timeout=30).values():
            future.result(timeout=60)
        for future in admin.create_acls(bindings, request_timeout=30).values():
            future.result(timeout=60)
    except KafkaException as exc:
        raise StackError(
            NAME, f"creating users and ACLs failed: {exc}", layout.paths.kafka_log
        ) from exc
    return f"users: {', '.join(users)} ({MECHANISM}); acls: {len(bindings)} for namespace " + (
        repr(namespace) if namespace else "(none)"
    )
