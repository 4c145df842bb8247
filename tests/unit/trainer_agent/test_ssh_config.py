"""``ssh_config`` of a ``run_mode: ssh`` stage: names a secret, never holds one; unknown keys and
half-given credentials are refused naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from posttrain.events.tasks import SshConfig
from posttrain.trainer_agent.supervisors.ssh_connect import SshError, resolve_secret

BASE = {"host": "gpu-1", "user": "lab", "key_secret": "gpu-key", "remote_dir": "/scratch/runs"}


def _errors(doc: dict[str, object]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        SshConfig.model_validate(doc)
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in info.value.errors()]


def test_defaults_are_port_22_and_strict_host_keys() -> None:
    config = SshConfig.model_validate(BASE)
    assert (config.port, config.known_hosts, config.agent, config.env) == (22, "strict", False, {})


def test_unknown_keys_are_refused_by_name() -> None:
    assert ("password", "Extra inputs are not permitted") in _errors({**BASE, "password": "x"})


def test_exactly_one_way_to_authenticate() -> None:
    both = _errors({**BASE, "agent": True})
    neither = _errors({k: v for k, v in BASE.items() if k != "key_secret"})
    assert all("exactly one of key_secret or agent" in msg for _, msg in both + neither)
    assert SshConfig.model_validate({**BASE, "key_secret": None, "agent": True}).agent


def test_bad_values_name_their_field() -> None:
    fields = {f for f, _ in _errors({**BASE, "port": 0, "known_hosts": "yes", "env": {"A B": "1"}})}
    assert fields == {"port", "known_hosts", "env"}
    assert {f for f, _ in _errors({**BASE, "key_secret": "../etc/shadow"})} == {"key_secret"}


def test_a_secret_resolves_from_the_environment_or_the_secrets_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTTRAIN_SECRETS_DIR", str(tmp_path))
    (tmp_path / "gpu-key").write_text("KEY FROM FILE")
    assert resolve_secret("gpu-key") == "KEY FROM FILE"
    monkeypatch.setenv("POSTTRAIN_SECRET_GPU_KEY", "KEY FROM ENV")
    assert resolve_secret("gpu-key") == "KEY FROM ENV"
    with pytest.raises(SshError, match="POSTTRAIN_SECRET_OTHER_KEY") as info:
        resolve_secret("other-key")
    assert "KEY FROM" not in str(info.value)
