"""Which supervisor runs a stage, from its RunStage payload."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LOCAL = "local"


def supervisor_for(run: Mapping[str, Any]) -> str:
    """The ``Supervisor.name`` that runs this stage. Every stage runs locally for now; the
    ``ssh`` (``run_mode: ssh``) and ``ranks`` (``resources.gpus > 1``) supervisors are chosen
    here when they land."""
    return LOCAL
