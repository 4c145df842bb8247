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

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from posttrain.metrics_ingest.core.batching import PRESETS, BatchPolicy, preset
from posttrain.service.http import parse_address

DEFAULT_DATABASE_URL = "postgresql://posttrain:posttrain@127.0.0.1:5432/posttrain"
DEFAULT_HTTP = "127.0.0.1:9464"


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


def database_url(env: Mapping[str, str] | None = None) -> str:
    return (os.environ if env is None else env).get("DATABASE_URL", DEFAULT_DATABASE_URL)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="posttrain-ingest",
        description="Consume posttrain.metrics into PostgreSQL (every point exactly once).",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="batch policy preset")
    parser.add_argument("--batch-rows", type=int, help="close a batch at this many rows")
    parser.add_argument("--batch-age", type=float, help="close a batch this many seconds old")
    parser.add_argument(
        "--max-pending-rows", type=int, help="pause consumption above this many rows in memory"
    )
    parser.add_argument("--http", help="host:port of /healthz, /metrics, /flush; 'off' for none")
    parser.add_argument("--instance-id", help="static group membership id (stable per replica)")
    parser.add_argument("--session-timeout-ms", type=int)
    parser.add_argument("--no-migrate", action="store_true", help="do not apply migrations")
    parser.add_argument("--log-level", default="INFO")
    return parser


def load_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> IngestConfig:
    environ = os.environ if env is None else env
    args = _parser().parse_args(argv)
    policy = preset(args.preset or environ.get("POSTTRAIN_INGEST_PRESET", "default"))
    rows = args.batch_rows or _int(environ, "POSTTRAIN_INGEST_BATCH_ROWS")
    age = (
        args.batch_age
        if args.batch_age is not None
        else _float(environ, "POSTTRAIN_INGEST_BATCH_AGE_S")
    )
    pending = args.max_pending_rows or _int(environ, "POSTTRAIN_INGEST_MAX_PENDING_ROWS")
    if rows is not None:
        policy = replace(policy, max_rows=rows, max_pending_rows=max(policy.max_pending_rows, rows))
    if age is not None:
        policy = replace(policy, max_age_s=age)
    if pending is not None:
        policy = replace(policy, max_pending_rows=pending)
    address = parse_address(args.http or environ.get("POSTTRAIN_INGEST_HTTP", DEFAULT_HTTP))
    host, port = address if address is not None else (None, 0)
    return IngestConfig(
        database_url=database_url(environ),
        policy=policy,
        http_host=host,
        http_port=port,
        instance_id=args.instance_id or environ.get("POSTTRAIN_INGEST_INSTANCE_ID") or None,
        session_timeout_ms=args.session_timeout_ms
        or _int(environ, "POSTTRAIN_INGEST_SESSION_TIMEOUT_MS")
        or 10_000,
        migrate=not args.no_migrate,
        log_level=args.log_level,
    )


def _int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    return int(value) if value else None


def _float(env: Mapping[str, str], name: str) -> float | None:
    value = env.get(name)
    return float(value) if value else None
