"""PostgreSQL NOTIFY channels that the services raise when they store something a live view
shows, and the gateway LISTENs on (one place for their names and payloads).

Each notification is sent in the transaction that stores the rows, so it is delivered when,
and only if, they are committed. Payloads are small JSON objects (PostgreSQL caps them at
8000 bytes): who to wake, never the data itself, which the listener reads from the tables.
"""

from __future__ import annotations

from typing import Final

# The orchestrator's projection: a pipeline's rows changed. Payload: the pipeline id (text).
PIPELINES: Final = "posttrain_pipelines"
# The metrics ingest stored points of a job. Payload: {"job_id", "step" (the highest stored),
# "pipeline_id" (or null)}.
METRICS: Final = "posttrain_metrics"
# Diagnostics stored an anomaly. Payload: {"anomaly_id", "job_id", "pipeline_id", "stage",
# "step", "anomaly_type", "severity"}.
ANOMALIES: Final = "posttrain_anomalies"

CHANNELS: Final = (PIPELINES, METRICS, ANOMALIES)

# One statement notifying once per payload, for asyncpg: ``execute(NOTIFY_EACH, channel,
# payloads)``.
NOTIFY_EACH: Final = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p"
