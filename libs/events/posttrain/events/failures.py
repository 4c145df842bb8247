"""Failure kinds and how a GPU out-of-memory failure is recognised, in one place.

``FailureKind`` is what ``StageFailed.kind`` says (messages/stage.py declares it with the message);
the agent classifies a stage's failure with the functions here, the v1 -> v2 upcaster classifies
old ``StageFailed`` events with them, and diagnostics reads them to find OOMs in the read model.
"""

from __future__ import annotations

from collections.abc import Iterable

from posttrain.events.messages.diagnostics import Severity
from posttrain.events.messages.stage import FailureKind

__all__ = [
    "OOM_TYPE_NAME",
    "FailureKind",
    "Severity",
    "is_oom_exception",
    "kind_from_text",
    "mentions_oom",
]

# torch raises torch.OutOfMemoryError (torch.cuda.OutOfMemoryError is the same class).
OOM_TYPE_NAME = "OutOfMemoryError"

# What a log or an error text says when CUDA ran out of memory, lower-cased: torch's exception
# name, and its messages ("CUDA out of memory", "CUDA error: out of memory").
_OOM_MARKERS = ("out of memory", OOM_TYPE_NAME.lower())


def is_oom_exception(type_names: Iterable[str]) -> bool:
    """True if the exception (or one in its chain, by qualified class name) is torch's OOM."""
    return any(name.rsplit(".", 1)[-1] == OOM_TYPE_NAME for name in type_names)


def mentions_oom(text: str) -> bool:
    """True if an error text or a log's end says the process ran out of GPU memory."""
    lowered = text.lower()
    return any(marker in lowered for marker in _OOM_MARKERS)


def kind_from_text(text: str) -> FailureKind:
    """``oom`` for a failure whose error text or log says it ran out of memory, else ``error``."""
    return "oom" if mentions_oom(text) else "error"
