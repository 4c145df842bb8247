"""Where the local stack keeps its state, from ``StackSettings`` (its environment variables)."""

from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.stack.paths import StackSettings, stack_paths


def test_state_follows_posttrain_stack_dir_and_software_stays_under_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTTRAIN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("POSTTRAIN_STACK_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("POSTTRAIN_PGDATA", raising=False)
    paths = stack_paths(is_root=False)
    assert paths.kafka_libs.is_relative_to(tmp_path / "home" / "kafka")
    assert paths.kafka_data == tmp_path / "state" / "kafka-data"
    assert paths.pg_data == tmp_path / "state" / "postgres"
    assert paths.lock == tmp_path / "state" / "run" / "stack.lock"


def test_an_empty_variable_is_unset_and_pgdata_holds_the_database_and_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTTRAIN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("POSTTRAIN_STACK_DIR", "")
    monkeypatch.setenv("POSTTRAIN_PGDATA", str(tmp_path / "pg"))
    paths = stack_paths(is_root=False)
    assert paths.kafka_data == tmp_path / "home" / "kafka-data"
    assert paths.pg_data == tmp_path / "pg"
    assert paths.pg_log == tmp_path / "pg" / "log" / "postgres.log"


def test_a_keyword_wins_over_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTTRAIN_STACK_DIR", str(tmp_path / "from-env"))
    settings = StackSettings(stack_dir=tmp_path / "given", posttrain_home=tmp_path / "home")
    assert stack_paths(settings, is_root=True).kafka_data == tmp_path / "given" / "kafka-data"
    assert StackSettings(stack_dir="").stack_dir is None
