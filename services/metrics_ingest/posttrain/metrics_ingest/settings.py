"""The service's configuration: environment variables, overridden by command-line options.

| variable                              | default                                   |
|---------------------------------------|-------------------------------------------|
| DATABASE_URL                          | the local stack's database                |
| KAFKA_BOOTSTRAP_SERVERS               | 127.0.0.1:9092                            |
| POSTTRAIN_TOPIC_NAMESPACE             | (none)                                    |
| POSTTRAIN_INGEST_PRESET               | default (``seed``: 100 rows / 30 s)       |
| POSTTRAIN_INGEST_BATCH_ROWS           | the preset's                              |
| POSTTRAIN_INGEST_BATCH_AGE_S          | the preset's                              |
| POSTTRAIN_INGEST_MAX_PENDING_ROWS     | the preset's                              |
| POSTTRAIN_INGEST_HTTP                 | 127.0.0.1:9464 (``off`` for none)         |
| POSTTRAIN_INGEST_INSTANCE_ID          | (none: dynamic group membership)          |
| POSTTRAIN_INGEST_SESSION_TIMEOUT_MS   | 10000                                     |
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from pydantic_settings import SettingsConfigDict

from posttrain.metrics_ingest.core.batching import BatchPolicy, preset
from posttrain.service.http import parse_address
from posttrain.service.settings import ServiceSettings

DEFAULT_HTTP = "127.0.0.1:9464"


class IngestSettings(ServiceSettings):
    """The ``POSTTRAIN_INGEST_*`` variables (and the shared ones); a keyword given to the
    constructor (a command-line option) wins over its variable."""

    model_config = SettingsConfigDict(env_prefix="POSTTRAIN_INGEST_")

    preset: str = "default"
    batch_rows: int | None = None
    batch_age_s: float | None = None
    max_pending_rows: int | None = None
    http: str = DEFAULT_HTTP
    instance_id: str | None = None
    session_timeout_ms: int = 10_000


@dataclass(frozen=True, slots=True)
class IngestConfig:
    database_url: str
    policy: BatchPolicy
    http_host: str | None
    http_port: int
    instance_id: str | None
    session_timeout_ms: int
    migrate: bool = True
    log_level: str = "INFO"


def load_config(*, migrate: bool = True, log_level: str = "INFO", **options: Any) -> IngestConfig:
    """The configuration from the environment, with ``options`` (``IngestSettings`` fields;
    None: not given) over it. A bad value raises ``ValueError`` naming it."""
    settings = IngestSettings(**{k: v for k, v in options.items() if v is not None})
    policy = preset(settings.preset)
    if settings.batch_rows is not None:
        rows = settings.batch_rows
        policy = replace(policy, max_rows=rows, max_pending_rows=max(policy.max_pending_rows, rows))
    if settings.batch_age_s is not None:
        policy = replace(policy, max_age_s=settings.batch_age_s)
    if settings.max_pending_rows is not None:
        policy = replace(policy, max_pending_rows=settings.max_pending_rows)
    address = parse_address(settings.http)
    host, port = address if address is not None else (None, 0)
    return IngestConfig(
        database_url=settings.database_url,
        policy=policy,
        http_host=host,
        http_port=port,
        instance_id=settings.instance_id or None,
        session_timeout_ms=settings.session_timeout_ms,
        migrate=migrate,
        log_level=log_level,
    )
