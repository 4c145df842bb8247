"""Which kind of failure a stage had, from what its process left behind."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

FailureKind = Literal["error", "oom", "cancelled", "lost", "timeout"]

# torch raises torch.OutOfMemoryError (torch.cuda.OutOfMemoryError is the same class); a
# process that died of it (the ``command`` task) leaves one of these in its log.
_OOM_MARKERS = ("OutOfMemoryError", "CUDA out of memory", "CUDA error: out of memory")


def is_oom_exception(type_names: Iterable[str]) -> bool:
    """True if the exception (or one in its chain, by class name) is torch's OOM."""
    return any(name.rsplit(".", 1)[-1] == "OutOfMemoryError" for name in type_names)


def kind_from_log(log_tail: str) -> FailureKind:
    return "oom" if any(marker in log_tail for marker in _OOM_MARKERS) else "error"


def tail(text: str, lines: int = 40, chars: int = 4000) -> str:
    """The end of a traceback or log: what a person reads first."""
    return "\n".join(text.splitlines()[-lines:])[-chars:]
