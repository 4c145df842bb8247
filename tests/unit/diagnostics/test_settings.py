"""The stream's settings: its POSTTRAIN_DIAGNOSTICS_* variables keep their names and defaults,
and the scan of failed jobs reads only a database it was pointed at."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from posttrain.diagnostics.alerts import load_config_book
from posttrain.diagnostics.settings import DiagnosticsSettings

NAMES = ("CONFIG", "WEB_PORT", "SCAN_S", "SESSION_TIMEOUT_S")


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NAMES:
        monkeypatch.delenv(f"POSTTRAIN_DIAGNOSTICS_{name}", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)


def test_defaults() -> None:
    settings = DiagnosticsSettings()
    assert (settings.config, settings.web_port, settings.scan_s) == (None, None, 0.0)
    assert settings.session_timeout_s == 10.0
    assert settings.scan_database_url is None  # never the local stack's by default


def test_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTTRAIN_DIAGNOSTICS_WEB_PORT", "6066")
    monkeypatch.setenv("POSTTRAIN_DIAGNOSTICS_SCAN_S", "2.5")
    monkeypatch.setenv("POSTTRAIN_DIAGNOSTICS_SESSION_TIMEOUT_S", "")  # empty: unset
    monkeypatch.setenv("DATABASE_URL", "postgresql://a@h/d")
    settings = DiagnosticsSettings()
    assert (settings.web_port, settings.scan_s, settings.session_timeout_s) == (6066, 2.5, 10.0)
    assert settings.scan_database_url == "postgresql://a@h/d"
    assert DiagnosticsSettings(web_port=7077).web_port == 7077  # an option wins
    monkeypatch.setenv("POSTTRAIN_DIAGNOSTICS_WEB_PORT", "six")
    with pytest.raises(ValidationError, match="web_port"):
        DiagnosticsSettings()


def test_the_config_book_comes_from_the_variable(monkeypatch, tmp_path) -> None:
    default = load_config_book()
    path = tmp_path / "diagnostics.json"
    path.write_text(json.dumps({"default": {"detectors": {"loss_spike": {"enabled": False}}}}))
    monkeypatch.setenv("POSTTRAIN_DIAGNOSTICS_CONFIG", str(path))
    assert default.default.detectors.loss_spike.enabled
    assert not load_config_book().default.detectors.loss_spike.enabled
