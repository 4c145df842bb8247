"""The pure core of diagnostics: no I/O, no asyncio, no clock.

``JobState`` folds a job's metric points through the rules of ``detectors``; ``policy`` turns
anomalies into action requests; ``alerting`` formats, signs and deduplicates alerts; ``ids``
holds the stable uuid5 ids.
"""

from posttrain.diagnostics.core.anomaly import Anomaly, AnomalyType
from posttrain.diagnostics.core.config import ConfigBook, DetectorConfig, PipelineConfig
from posttrain.diagnostics.core.ids import anomaly_id
from posttrain.diagnostics.core.state import JobState, diagnose_points

__all__ = [
    "Anomaly",
    "AnomalyType",
    "ConfigBook",
    "DetectorConfig",
    "JobState",
    "PipelineConfig",
    "anomaly_id",
    "diagnose_points",
]
