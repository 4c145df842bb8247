"""The base of every command and event: a frozen pydantic model with a type name and version."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class Message(BaseModel):
    """A command (imperative name) or event (past tense) carried in an envelope.

    ``TYPE`` is the stable wire name; ``VERSION`` the current schema version. A change that would
    break a reader is a new version with an upcaster from the previous one, never an edit in place.
    Unknown fields are ignored so that an additive change does not break older readers.
    """

    model_config = ConfigDict(frozen=True, extra="ignore", ser_json_inf_nan="strings")

    TYPE: ClassVar[str]
    VERSION: ClassVar[int] = 1
