"""Training metrics (posttrain.metrics, key job_id), batched: many points per message."""

from __future__ import annotations

import os
import re
import socket
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from posttrain.events.messages.base import Message

# A reporter's source: ``host:pid:random``, unique per reporter, readable by a human. The
# reporters of one process are one run of their job (see ``run_key``).
_REPORTER_SOURCE = re.compile(r"^(?P<process>.+:\d+):[0-9a-f]{8}$")


def reporter_source() -> str:
    """A new reporter's source name in this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def run_key(source: str, attempt: int | None) -> str:
    """Which run of its job a source's points belong to. Under the trainer agent, the stage's
    attempt (its callback and its tailed metrics file are one run; a retry is the next run);
    outside it, the reporter's process (a script started twice under one job id is two runs,
    the reporters of one process one run); any other source (a synced file, a producer of
    its own) belongs to the job's one run of such sources."""
    if attempt is not None:
        return f"attempt:{attempt}"
    match = _REPORTER_SOURCE.match(source)
    if match is not None:
        return f"process:{match.group('process')}"
    return "other"


# The seed's StructuredMetric fields plus the canonical names of METRICS.md. Everything else a
# trainer logs goes under ``custom``: nothing is dropped.
CORE_FIELDS: tuple[str, ...] = (
    "loss",
    "policy_loss",
    "value_loss",
    "learning_rate",
    "grad_norm",
    "reward_mean",
    "reward_std",
    "kl_divergence",
    "entropy",
    "response_length_mean",
    "clip_frac",
    "throughput_samples_per_sec",
    "tokens_per_second",
    "gpu_memory_allocated_gb",
    "gpu_utilization_percent",
    "eval_loss",
    "eval_accuracy",
)


class MetricPoint(BaseModel):
    """One training step's measurements. Non-finite floats (NaN, inf) are kept on the wire as
    the strings "NaN"/"Infinity" so that a NaN loss is never turned into a missing value."""

    model_config = ConfigDict(frozen=True, extra="ignore", ser_json_inf_nan="strings")

    step: int
    epoch: float | None = None
    timestamp: float
    loss: float | None = None
    policy_loss: float | None = None
    value_loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    reward_mean: float | None = None
    reward_std: float | None = None
    kl_divergence: float | None = None
    entropy: float | None = None
    response_length_mean: float | None = None
    clip_frac: float | None = None
    throughput_samples_per_sec: float | None = None
    tokens_per_second: float | None = None
    gpu_memory_allocated_gb: float | None = None
    gpu_utilization_percent: float | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    custom: dict[str, Any] = Field(default_factory=dict)


class MetricsReported(Message):
    """A batch of points from one source of one job.

    ``(job_id, source, first_seq + i)`` identifies point i for ever: ingest dedups redelivery on
    it. v2 renamed v1's ``job_uuid`` (the seed's name) and added the idempotency key.
    """

    TYPE = "MetricsReported"
    VERSION = 2

    job_id: str
    source: str
    first_seq: int
    points: list[MetricPoint]
    pipeline_id: str | None = None
    stage: str | None = None
    attempt: int | None = None
