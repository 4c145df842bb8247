"""What a stage's process left behind, for a failure's report: its exit status and its log's end.

Which kind of failure it was (OOM or not) is libs/events' ``posttrain.events.failures``."""

from __future__ import annotations

import contextlib
import signal
from typing import Any

__all__ = ["exit_details", "tail"]


def exit_details(exit_code: int | None) -> dict[str, Any]:
    """What a process's exit status says, for a failure's details: the code, and the signal
    that ended it (a negative status, as Python reports it; or 128 + n, as a shell does)."""
    if exit_code is None:
        return {}
    details: dict[str, Any] = {"exit_code": exit_code}
    number = -exit_code if exit_code < 0 else exit_code - 128 if exit_code > 128 else None
    if number is not None:
        with contextlib.suppress(ValueError):
            details["signal"] = signal.Signals(number).name
    return details


def tail(text: str, lines: int = 40, chars: int = 4000) -> str:
    """The end of a traceback or log: what a person reads first."""
    return "\n".join(text.splitlines()[-lines:])[-chars:]
