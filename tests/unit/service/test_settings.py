"""The shared settings: DATABASE_URL and POSTTRAIN_HOME read once, with one default each."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from posttrain.service.settings import (
    DEFAULT_DATABASE_URL,
    ServiceSettings,
    database_url,
    posttrain_home,
)


def test_defaults_without_the_variables(monkeypatch, tmp_path):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("POSTTRAIN_HOME", raising=False)
    monkeypatch.delenv("POSTTRAIN_LOG_LEVEL", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = ServiceSettings()
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.posttrain_home == tmp_path / ".cache" / "posttrain"
    assert database_url() == DEFAULT_DATABASE_URL
    assert posttrain_home() == tmp_path / ".cache" / "posttrain"
    assert settings.log_level == "INFO"


def test_the_variables_keep_their_names(monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", "postgresql://a:b@127.0.0.1:1/c")
    monkeypatch.setenv("POSTTRAIN_HOME", "~/elsewhere")
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = ServiceSettings()
    assert settings.database_url == "postgresql://a:b@127.0.0.1:1/c"
    assert settings.posttrain_home == tmp_path / "elsewhere"
    assert posttrain_home() == tmp_path / "elsewhere"
    # An explicit URL wins over the environment; an empty variable counts as unset.
    assert database_url("postgresql://x@h/d") == "postgresql://x@h/d"
    monkeypatch.setenv("DATABASE_URL", "")
    assert database_url() == DEFAULT_DATABASE_URL


def test_a_service_adds_its_own_fields(monkeypatch):
    from pydantic_settings import SettingsConfigDict

    class Ingest(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix="POSTTRAIN_TEST_")
        batch_rows: int = 100

    monkeypatch.setenv("POSTTRAIN_TEST_BATCH_ROWS", "7")
    monkeypatch.setenv("DATABASE_URL", "postgresql://a@h/d")
    settings = Ingest()
    assert (settings.batch_rows, settings.database_url) == (7, "postgresql://a@h/d")
    monkeypatch.setenv("POSTTRAIN_TEST_BATCH_ROWS", "many")
    with pytest.raises(ValidationError, match="batch_rows"):
        Ingest()
