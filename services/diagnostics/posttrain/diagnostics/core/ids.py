"""The stable ids of diagnostics: uuid5 over a "/"-joined key, one namespace per kind of id.

The stream, the batch and a restarted stream must give the same anomaly, and the same action
on it, the same id, so these keys and namespaces never change: an id stored or published once
is matched against ids computed later.
"""

from __future__ import annotations

import uuid

_ANOMALY_NAMESPACE = uuid.UUID("6c1f0f5e-4e0b-4b7e-9a53-2c1d7f3f8e11")
_ACTION_NAMESPACE = uuid.UUID("0b7c8a3e-58a4-4e59-8f0e-6f9f3d1e2a77")


def _stable_id(namespace: uuid.UUID, *parts: object) -> str:
    # Each part formatted as an f-string formats it (not ``str``): the ids were first computed
    # that way, and format and str differ for some types (an IntEnum).
    return str(uuid.uuid5(namespace, "/".join(f"{part}" for part in parts)))


def anomaly_id(job_id: str, generation: int, anomaly_type: str, step: int) -> str:
    """A detected anomaly: one id per (job, generation, type, step)."""
    return _stable_id(_ANOMALY_NAMESPACE, job_id, generation, anomaly_type, step)


def oom_anomaly_id(job_id: str, command_id: str) -> str:
    """A failed attempt's OOM: one id whether the stream or the periodic scan finds it."""
    return _stable_id(_ANOMALY_NAMESPACE, job_id, "oom", command_id)


def action_id(anomaly_id: str, action: str) -> str:
    """Deterministic: the same anomaly never asks for the same action under two ids."""
    return _stable_id(_ACTION_NAMESPACE, anomaly_id, action)
