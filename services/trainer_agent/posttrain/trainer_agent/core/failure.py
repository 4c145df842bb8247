"""Which kind of failure a stage had, from what its process left behind."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterable
from typing import Any

from posttrain.events.messages.stage import FailureKind

__all__ = ["FailureKind", "exit_details", "is_oom_exception", "kind_from_log", "tail"]

# torch raises torch.OutOfMemoryError (torch.cuda.OutOfMemoryError is the same class); a
# process that died of it (the ``command`` task) leaves one of these in its log.
_OOM_MARKERS = ("OutOfMemoryError", "CUDA out of memory", "CUDA error: out of memory")


def is_oom_exception(type_names: Iterable[str]) -> bool:
    """True if the exception (or one in its chain, by class name) is torch's OOM."""
    return any(name.rsplit(".", 1)[-1] == "OutOfMemoryError" for name in type_names)


def kind_from_log(log_tail: str) -> FailureKind:
    return "oom" if any(marker in log_tail for marker in _OOM_MARKERS) else "error"


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
