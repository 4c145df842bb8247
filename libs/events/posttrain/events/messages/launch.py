"""How one launch of a stage process ended: what the stage process writes to its
``result-<n>.json`` for the agent that watches it (never on Kafka).

One message with three shapes, told apart by ``status``::

    succeeded   outputs
    paused      step, checkpoint, non_finite, resume_checkpoint, outputs
    failed      kind, error, details

and, on each, ``control_offset`` (how far the stage read the control file) and ``finished_at``
when the stage process got that far.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from posttrain.events.messages.base import Message

JsonDict = dict[str, Any]

LaunchStatus = Literal["succeeded", "paused", "failed"]


class LaunchEnded(Message):
    """A launch's result. Its writer sets only the fields of its shape and writes only those
    (``model_dump_json(exclude_unset=True)``): a field left out (a paused stage without a
    ``resume_checkpoint`` goes on from ``checkpoint``) reads differently from one set to
    null, as it did when the result was a plain dict."""

    TYPE = "LaunchEnded"

    status: LaunchStatus
    outputs: JsonDict | None = None
    # paused
    step: int | None = None
    checkpoint: str | None = None
    non_finite: list[str] | None = None
    resume_checkpoint: str | None = None
    # failed. ``kind`` is what the stage named (a task's exception may carry its own); the agent
    # maps one outside FailureKind to "error" (core.outcomes.failure_kind).
    kind: str | None = None
    error: str | None = None
    details: JsonDict | None = None
    # every shape, once the stage process got that far
    control_offset: int | None = None
    finished_at: float | None = None

    @model_validator(mode="after")
    def _failed_says_why(self) -> LaunchEnded:
        if self.status == "failed" and (self.kind is None or self.error is None):
            raise ValueError("a failed launch names its kind and error")
        return self


# A file between the agent and its stage process, never a Kafka record: decoded with this
# registry (``codec.decode(..., types=LAUNCH_TYPES)``), not on any topic, so not in
# ``MESSAGE_TYPES`` (whose every type travels on some topic).
LAUNCH_TYPES: dict[str, type[Message]] = {LaunchEnded.TYPE: LaunchEnded}
