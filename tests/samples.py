"""A valid sample of every message type, built from the models' own type hints, so that a new
type is covered by the round-trip tests without anyone writing a sample for it."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel

from posttrain.events import MESSAGE_TYPES, Message


def sample_value(annotation: Any, name: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return {"nested": [1, "two", {"three": 3.5}], "flag": True}
    if origin is typing.Literal:
        return args[0]
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        return sample_value(non_none[0], name)
    if origin is list:
        return [sample_value(args[0], name), sample_value(args[0], name + "2")]
    if origin is dict:
        return {"a": sample_value(args[1], name), "b": sample_value(args[1], name + "b")}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return sample_model(annotation)
    if annotation is str:
        return f"{name}-value"
    if annotation is bool:
        return True
    if annotation is int:
        return 7
    if annotation is float:
        return 0.25
    raise TypeError(f"no sample for {annotation!r} ({name})")


def sample_model(cls: type[BaseModel]) -> Any:
    return cls(
        **{field: sample_value(info.annotation, field) for field, info in cls.model_fields.items()}
    )


def sample_messages() -> list[Message]:
    return [sample_model(cls) for cls in MESSAGE_TYPES.values()]
