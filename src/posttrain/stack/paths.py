"""Where the local stack keeps its software, data, logs and pid files.

Everything lives outside the checkout so that a fresh clone, a second run and CI on the same
machine reuse the fetched jars and the data. Pure: computed from ``StackSettings`` and the
current user, no I/O.

| variable            | default                                                        |
|---------------------|----------------------------------------------------------------|
| POSTTRAIN_HOME      | ``$HOME/.cache/posttrain`` (the broker's jars; state when unset) |
| POSTTRAIN_STACK_DIR | (none: state under POSTTRAIN_HOME, the database as below)      |
| POSTTRAIN_PGDATA    | (none: ``postgres`` in the state directory)                    |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, field_validator

from posttrain.service.settings import ServiceSettings

KAFKA_VERSION = "4.1.1"

# When we run as root, /root is mode 700 and the postgres OS user cannot reach ~/.cache, so the
# database lives in a directory that user owns.
ROOT_STATE_DIR = Path("/var/lib/posttrain")
POSTGRES_OS_USER = "postgres"


class StackSettings(ServiceSettings):
    """``POSTTRAIN_STACK_DIR`` and ``POSTTRAIN_PGDATA`` (and the shared ``POSTTRAIN_HOME``); a
    keyword given to the constructor wins over its variable."""

    stack_dir: Path | None = Field(
        default=None, validation_alias=AliasChoices("POSTTRAIN_STACK_DIR")
    )
    pgdata: Path | None = Field(default=None, validation_alias=AliasChoices("POSTTRAIN_PGDATA"))

    @field_validator("stack_dir", "pgdata", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # An empty keyword counts as unset, as an empty variable does.
        return value or None

    @field_validator("stack_dir")
    @classmethod
    def _expand_stack_dir(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser()


@dataclass(frozen=True, slots=True)
class StackPaths:
    home: Path
    kafka_dist: Path
    kafka_libs: Path
    kafka_fetched_marker: Path
    kafka_config_dir: Path
    kafka_server_properties: Path
    kafka_log4j2: Path
    kafka_data: Path
    kafka_cluster_id: Path
    kafka_log: Path
    kafka_pid: Path
    pg_data: Path
    pg_log: Path
    # Run PostgreSQL's tools as this OS user (None: as ourselves).
    pg_os_user: str | None
    lock: Path

    @property
    def pg_socket_dir(self) -> Path:
        # Inside the data dir: always writable by the server user, private to this cluster.
        return self.pg_data


def stack_paths(
    settings: StackSettings | None = None, *, is_root: bool | None = None
) -> StackPaths:
    """Software (the broker's jars) under POSTTRAIN_HOME; state (configuration, data, logs, pid
    files) under POSTTRAIN_STACK_DIR when it is set, so a CI run or a cold-start check gets a
    broker and a database initialised afresh while reusing the fetched software. ``settings``:
    read from the environment when None."""
    settings = StackSettings() if settings is None else settings
    root = os.geteuid() == 0 if is_root is None else is_root
    home = settings.posttrain_home
    dist = home / "kafka" / KAFKA_VERSION
    state = settings.stack_dir
    base = state or home
    config_dir = base / "kafka-config"
    state_dir = state or (ROOT_STATE_DIR if root else home)
    pg_data = settings.pgdata
    return StackPaths(
        home=home,
        kafka_dist=dist,
        kafka_libs=dist / "libs",
        kafka_fetched_marker=dist / ".fetched",
        kafka_config_dir=config_dir,
        kafka_server_properties=config_dir / "server.properties",
        kafka_log4j2=config_dir / "log4j2.xml",
        kafka_data=base / "kafka-data",
        kafka_cluster_id=base / "kafka-cluster-id",
        kafka_log=base / "logs" / "kafka.log",
        kafka_pid=base / "run" / "kafka.pid",
        pg_data=pg_data or state_dir / "postgres",
        # The server writes its own log, so it must sit where the server user can write; with
        # an explicit data dir, inside it (not in a directory of ours it may not share).
        pg_log=pg_data / "log" / "postgres.log" if pg_data else state_dir / "logs" / "postgres.log",
        pg_os_user=POSTGRES_OS_USER if root else None,
        lock=base / "run" / "stack.lock",
    )
