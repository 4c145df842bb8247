"""Deterministic identifiers: the same inputs always give the same id, live or in replay."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson


def command_id(pipeline_id: str, stage: str, attempt: int) -> str:
    """The id of a stage attempt's RunStage: agents dedupe on it, so a re-sent command never
    trains twice."""
    return f"{pipeline_id}:{stage}:{attempt}"


def job_id(pipeline_id: str, stage: str, params: Mapping[str, Any]) -> str:
    """The training job a stage's metrics belong to: the seed's ``params.job_uuid`` if given.

    All attempts of a stage share it: a retry continues the same job from its checkpoint."""
    given = params.get("job_uuid")
    return str(given) if given else f"{pipeline_id}.{stage}"


def event_id(cause_id: str, index: int) -> str:
    """The id of the index-th event decided in response to the message ``cause_id``."""
    return f"{cause_id}/{index}"


def cache_key(task: str, params: Mapping[str, Any], upstream: Mapping[str, Any]) -> str:
    """The hash a ``cache: true`` stage is reused by: task, resolved params, upstream outputs."""
    doc = orjson.dumps(
        {"task": task, "params": params, "upstream": upstream}, option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(doc).hexdigest()
