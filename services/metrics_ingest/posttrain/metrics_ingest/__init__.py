"""posttrain metrics_ingest: metrics from Kafka into PostgreSQL, exactly once, and queries.

The query and sync API (what the gateway and the SDK import)::

    from posttrain.metrics_ingest import get_latest_metrics, get_metrics_range,
        get_downsampled_metrics, get_metric_series, get_job_points, get_metric_jobs,
        get_metric_runs, sync_metrics_from_file, flush_metrics

The service itself: ``python -m posttrain.metrics_ingest`` (``posttrain-ingest``).
"""

from posttrain.metrics_ingest.filesync import SyncResult, sync_metrics_from_file
from posttrain.metrics_ingest.flushing import FlushFailed, flush_metrics
from posttrain.metrics_ingest.queries import (
    DownsampledSeries,
    MetricJob,
    MetricRun,
    MetricSeries,
    StoredMetric,
    UnknownField,
    close_default_pool,
    get_downsampled_metrics,
    get_job_points,
    get_latest_metrics,
    get_metric_jobs,
    get_metric_runs,
    get_metric_series,
    get_metrics_range,
)
from posttrain.metrics_ingest.service import IngestService

__all__ = [
    "DownsampledSeries",
    "FlushFailed",
    "IngestService",
    "MetricJob",
    "MetricRun",
    "MetricSeries",
    "StoredMetric",
    "SyncResult",
    "UnknownField",
    "close_default_pool",
    "flush_metrics",
    "get_downsampled_metrics",
    "get_job_points",
    "get_latest_metrics",
    "get_metric_jobs",
    "get_metric_runs",
    "get_metric_series",
    "get_metrics_range",
    "sync_metrics_from_file",
]
