"""posttrain: event-sourced LLM post-training pipelines over Apache Kafka.

``from posttrain import ...`` gives the seed's API (SEED.md), each call blocking with an
``a``-prefixed coroutine twin; ``posttrain.sdk`` holds it. The names load on first use, so that
``import posttrain.events`` in a service costs nothing more.

``posttrain`` is shared by several distributions (posttrain-events, the services, this one):
``extend_path`` lets their ``posttrain/`` directories, installed anywhere on ``sys.path``, be
one package with this file.
"""

from __future__ import annotations

import importlib
from pkgutil import extend_path
from typing import TYPE_CHECKING, Any

__path__ = extend_path(__path__, __name__)

# The seed's names (SEED.md) with their a-twins, all defined in posttrain.sdk.
SDK_NAMES = (
    "DagResolver",
    "DiagnosticService",
    "FlushFailed",
    "InvalidPipeline",
    "PipelineExecutor",
    "UnknownPipeline",
    "aflush_metrics",
    "aget_latest_metrics",
    "aget_pipeline_status",
    "asend_alert",
    "async_metrics_from_file",
    "create_metrics_file_writer",
    "create_training_callback",
    "flush_metrics",
    "get_latest_metrics",
    "get_pipeline_status",
    "send_alert",
    "sync_metrics_from_file",
)

__all__ = list(SDK_NAMES)

if TYPE_CHECKING:
    from posttrain.sdk import *  # noqa: F403


def __getattr__(name: str) -> Any:
    if name in SDK_NAMES:
        value = getattr(importlib.import_module("posttrain.sdk"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'posttrain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *SDK_NAMES])
