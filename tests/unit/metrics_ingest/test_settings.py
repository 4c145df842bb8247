"""Configuration: the seed's policy by name, explicit values over the preset, options over
the environment."""

from __future__ import annotations

from posttrain.metrics_ingest.cli import job_from_file_name
from posttrain.metrics_ingest.core.batching import DEFAULT_POLICY
from posttrain.metrics_ingest.settings import load_config


def test_defaults() -> None:
    config = load_config([], env={})
    assert config.policy == DEFAULT_POLICY
    assert (config.http_host, config.http_port) == ("127.0.0.1", 9464)
    assert config.instance_id is None


def test_the_seed_preset_from_the_environment_and_overrides_from_options() -> None:
    config = load_config(["--batch-age", "5"], env={"POSTTRAIN_INGEST_PRESET": "seed"})
    assert (config.policy.max_rows, config.policy.max_age_s) == (100, 5.0)


def test_batch_rows_raise_the_memory_bound_with_them() -> None:
    config = load_config(["--batch-rows", "500000", "--http", "off"], env={})
    assert config.policy.max_rows == 500_000
    assert config.policy.max_pending_rows >= 500_000
    assert config.http_host is None


def test_the_job_comes_from_the_file_writers_naming() -> None:
    assert job_from_file_name("job-42_metrics.jsonl") == "job-42"
    assert job_from_file_name("metrics.jsonl") is None
