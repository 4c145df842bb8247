"""Upcasters: read an older schema version as the current one.

Each upcaster turns the ``data`` dict of one type from version n into version n + 1. Reading
chains them, so a v1 payload of a type now at v3 goes v1 -> v2 -> v3 before validation. Adding a
version means adding one small function here; the old ones stay for ever.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from posttrain.events.failures import kind_from_text

Data = dict[str, Any]
Upcaster = Callable[[Data], Data]
UpcasterTable = Mapping[tuple[str, int], Upcaster]


class MissingUpcaster(LookupError):
    pass


def upcast(
    type_name: str,
    data: Data,
    from_version: int,
    to_version: int,
    table: UpcasterTable | None = None,
) -> Data:
    """Apply the chain of upcasters for ``type_name`` from ``from_version`` to ``to_version``."""
    chain = UPCASTERS if table is None else table
    for version in range(from_version, to_version):
        step = chain.get((type_name, version))
        if step is None:
            raise MissingUpcaster(f"no upcaster for {type_name} v{version} -> v{version + 1}")
        data = step(data)
    return data


def _stage_failed_v1_to_v2(data: Data) -> Data:
    # v1 carried only the error text; v2 classifies the failure so that OOMs can be acted on.
    kind = kind_from_text(str(data.get("error", "")))
    return {**data, "kind": kind, "details": data.get("details", {})}


def _agent_heartbeat_v1_to_v2(data: Data) -> Data:
    # v1: labels as "a,b" and no free count; an agent then took one stage per GPU it ran.
    raw = data.get("labels", "")
    labels = (
        [part.strip() for part in raw.split(",") if part.strip()] if isinstance(raw, str) else raw
    )
    running = data.get("running", [])
    gpus = int(data.get("gpus", 0))
    return {**data, "labels": labels, "free_gpus": max(gpus - len(running), 0)}


def _metrics_reported_v1_to_v2(data: Data) -> Data:
    # v1 used the seed's name ``job_uuid`` and had no idempotency key. A v1 producer sent each
    # step once, so the first step names the batch as a source of its own.
    out = {k: v for k, v in data.items() if k != "job_uuid"}
    out["job_id"] = data.get("job_id", data.get("job_uuid"))
    points = data.get("points", [])
    first_step = points[0].get("step", 0) if points else 0
    out.setdefault("source", f"v1:{first_step}")
    out.setdefault("first_seq", 0)
    return out


UPCASTERS: dict[tuple[str, int], Upcaster] = {
    ("StageFailed", 1): _stage_failed_v1_to_v2,
    ("AgentHeartbeat", 1): _agent_heartbeat_v1_to_v2,
    ("MetricsReported", 1): _metrics_reported_v1_to_v2,
}
