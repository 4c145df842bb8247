"""The Prometheus exposition: lag, batch sizes, rows/s, dead letters."""

from __future__ import annotations

from posttrain.metrics_ingest.stats import IngestStats, render_prometheus
from tests.prometheus import samples


def test_the_exposition_reports_what_the_service_did() -> None:
    stats = IngestStats()
    stats.batch_written(offered=500, inserted=500, via_staging=False, now=100.0)
    stats.batch_written(offered=20_000, inserted=19_000, via_staging=True, now=101.0)
    stats.dead_letters = 2
    stats.paused = True
    lag = {("posttrain.metrics", 0): 5, ("posttrain.metrics", 1): 7}
    got = samples(render_prometheus(stats, lag, now=101.0))
    assert (
        got['posttrain_ingest_consumer_lag_messages{partition="1",topic="posttrain.metrics"}'] == 7
    )
    assert got["posttrain_ingest_consumer_lag_messages_total"] == 12
    assert got['posttrain_ingest_batch_rows_bucket{le="1000.0"}'] == 1
    assert got['posttrain_ingest_batch_rows_bucket{le="20000.0"}'] == 2
    assert got['posttrain_ingest_batch_rows_bucket{le="+Inf"}'] == 2
    assert got["posttrain_ingest_batch_rows_sum"] == 20_500
    assert got["posttrain_ingest_rows_inserted_total"] == 19_500
    assert got["posttrain_ingest_rows_duplicate_total"] == 1_000
    assert got["posttrain_ingest_rows_per_second"] == 1_950
    assert got["posttrain_ingest_dead_letters_total"] == 2
    assert got["posttrain_ingest_paused"] == 1


def test_rows_per_second_forgets_old_batches() -> None:
    stats = IngestStats()
    stats.batch_written(offered=1000, inserted=1000, via_staging=False, now=0.0)
    assert stats.rows_per_second(5.0) == 100
    assert stats.rows_per_second(60.0) == 0
