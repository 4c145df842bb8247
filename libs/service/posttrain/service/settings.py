"""Settings every service shares, read from the environment once, with their defaults defined
here and nowhere else.

| variable            | default                                                       |
|---------------------|---------------------------------------------------------------|
| DATABASE_URL        | the local stack's database (``DEFAULT_DATABASE_URL``)         |
| POSTTRAIN_HOME      | ``$HOME/.cache/posttrain`` (caches, state, agents' work dirs) |
| POSTTRAIN_LOG_LEVEL | INFO (the orchestrator's and the gateway's JSON logs)         |

A service's own settings subclass ``ServiceSettings`` (pydantic-settings), so that a variable
keeps its name everywhere and a bad value is refused with the setting named.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "postgresql://posttrain:posttrain@127.0.0.1:5432/posttrain"


def default_home() -> Path:
    """``$HOME/.cache/posttrain``: outside any checkout, so a second run reuses it."""
    return Path(os.environ.get("HOME") or str(Path.home())) / ".cache" / "posttrain"


class ServiceSettings(BaseSettings):
    """``DATABASE_URL`` and ``POSTTRAIN_HOME``; a service adds its own fields (with their own
    ``env_prefix`` through ``model_config``)."""

    # An empty variable counts as unset; a keyword argument may use the field's name.
    model_config = SettingsConfigDict(
        extra="ignore", frozen=True, env_ignore_empty=True, populate_by_name=True
    )

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL, validation_alias=AliasChoices("DATABASE_URL")
    )
    log_level: str = Field(default="INFO", validation_alias=AliasChoices("POSTTRAIN_LOG_LEVEL"))
    posttrain_home: Path = Field(
        default_factory=default_home, validation_alias=AliasChoices("POSTTRAIN_HOME")
    )

    @field_validator("posttrain_home")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()


def database_url(url: str | None = None) -> str:
    """``url`` when given, else ``DATABASE_URL``, else the local stack's database."""
    # An empty DATABASE_URL counts as unset, as it does for libpq.
    return url or ServiceSettings().database_url or DEFAULT_DATABASE_URL


def posttrain_home() -> Path:
    """``POSTTRAIN_HOME`` (``~`` expanded), else ``$HOME/.cache/posttrain``: the settings'
    field, for a caller that needs nothing else of them."""
    return ServiceSettings().posttrain_home
