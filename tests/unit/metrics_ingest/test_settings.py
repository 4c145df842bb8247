"""Configuration: the seed's policy by name, explicit values over the preset, options over
the environment."""

from __future__ import annotations

import os

import pytest

from posttrain.metrics_ingest.cli import job_from_file_name
from posttrain.metrics_ingest.core.batching import DEFAULT_POLICY
from posttrain.metrics_ingest.settings import load_config


@pytest.fixture(autouse=True)
def _no_ingest_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith("POSTTRAIN_INGEST_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    config = load_config()
    assert config.policy == DEFAULT_POLICY
    assert (config.http_host, config.http_port) == ("127.0.0.1", 9464)
    assert config.instance_id is None


def test_the_seed_preset_from_the_environment_and_overrides_from_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POSTTRAIN_INGEST_PRESET", "seed")
    monkeypatch.setenv("POSTTRAIN_INGEST_BATCH_AGE_S", "9")
    config = load_config(batch_age_s=5.0)
    assert (config.policy.max_rows, config.policy.max_age_s) == (100, 5.0)
    monkeypatch.setenv("POSTTRAIN_INGEST_BATCH_ROWS", "")  # empty: unset
    assert load_config().policy.max_age_s == 9.0


def test_a_bad_variable_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTTRAIN_INGEST_BATCH_ROWS", "many")
    with pytest.raises(ValueError, match="batch_rows"):
        load_config()


def test_batch_rows_raise_the_memory_bound_with_them() -> None:
    config = load_config(batch_rows=500_000, http="off")
    assert config.policy.max_rows == 500_000
    assert config.policy.max_pending_rows >= 500_000
    assert config.http_host is None


def test_the_job_comes_from_the_file_writers_naming() -> None:
    assert job_from_file_name("job-42_metrics.jsonl") == "job-42"
    assert job_from_file_name("metrics.jsonl") is None
