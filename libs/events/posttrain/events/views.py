"""Read-only views of messages, decoded in one pass: for readers that fold whole logs.

``decode`` builds a validated pydantic model for every message, about 6 us each, most of it
validation. A reader that folds a million events (the orchestrator rebuilding its state) only
reads field values. For each message type whose fields are plain JSON values (no nested models),
a view is a frozen msgspec Struct derived from the model here, at import: the same field names,
types and defaults, and the model's ``TYPE`` and ``VERSION``. ``ViewDecoder`` reads an envelope
and its view in one msgspec pass (under 1 us).

A view is only ever a faster way to the same values: whatever the view decoder is not sure of goes
through ``decode`` unchanged, so that a view never accepts what ``decode`` refuses nor reads a value
differently. That covers another version of the type (an upcaster must run), types that nest
models, and any value msgspec's strict types refuse where pydantic's lax ones might accept it (a
NaN written as the string "NaN" into a float field, an int written as 1.0). One difference is
left, on purpose: an integer beyond 64 bits, which orjson (and so ``decode``) rounds to a float
and msgspec reads exactly; nothing posttrain writes holds one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from types import UnionType
from typing import Any, Literal, Union, cast, get_args, get_origin

import msgspec

from posttrain.events.codec import DecodeError, decode, has_extra_headers
from posttrain.events.envelope import NO_HEADERS, Envelope
from posttrain.events.messages import MESSAGE_TYPES, Message
from posttrain.events.upcasters import UpcasterTable

# The only leaf types a view takes: msgspec and pydantic read JSON into them alike. (Not bytes:
# msgspec expects base64; not datetime: the two parsers accept different forms.)
_PLAIN_LEAVES: frozenset[Any] = frozenset({str, int, float, bool, type(None), Any})


def _is_plain(annotation: Any) -> bool:
    """Whether msgspec reads values of this type exactly as pydantic does (no nested models)."""
    origin = get_origin(annotation)
    if origin is None:
        return annotation in _PLAIN_LEAVES
    if origin is Literal:
        return True
    if origin in (Union, UnionType, list, dict):
        return all(_is_plain(arg) for arg in get_args(annotation))
    return False


def _derive_view(cls: type[Message]) -> type[msgspec.Struct] | None:
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for name, info in cls.model_fields.items():
        if info.alias is not None or not _is_plain(info.annotation):
            return None
        if info.default_factory is not None:
            if info.default_factory_takes_validated_data:
                return None
            factory = cast(Callable[[], Any], info.default_factory)
            fields.append((name, info.annotation, msgspec.field(default_factory=factory)))
        elif info.is_required():
            fields.append((name, info.annotation))
        else:
            fields.append((name, info.annotation, info.default))
    return msgspec.defstruct(
        f"{cls.__name__}View",
        fields,
        kw_only=True,
        frozen=True,
        module=__name__,
        namespace={"TYPE": cls.TYPE, "VERSION": cls.VERSION},
    )


class EnvelopeView(msgspec.Struct, frozen=True, kw_only=True):
    """An envelope read with its view: the fields and properties of ``Envelope`` (building an
    ``Envelope`` from it would cost a third of the decode); each type's subclass adds ``version``.
    Extra headers never reach a view."""

    id: str
    occurred_at: datetime
    key: str
    data: Any
    correlation_id: str | None = None
    causation_id: str | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        return NO_HEADERS

    @property
    def type(self) -> str:
        return str(self.data.TYPE)


def _derive_envelope(cls: type[Message], view: type[msgspec.Struct]) -> type[EnvelopeView]:
    # Tagged by the envelope's "type"; "version" must be the current one, so an older payload
    # fails here and goes through decode() and its upcasters.
    return msgspec.defstruct(  # type: ignore[return-value]
        f"{cls.__name__}EnvelopeView",
        [("version", Literal[cls.VERSION]), ("data", view)],
        bases=(EnvelopeView,),
        tag_field="type",
        tag=cls.TYPE,
        kw_only=True,
        module=__name__,
    )


_VIEWS: dict[type[Message], type[msgspec.Struct] | None] = {}


def view_type(cls: type[Message]) -> type[msgspec.Struct] | None:
    """The view of a message type (always the same class), or None when its messages are always
    read as models."""
    if cls not in _VIEWS:
        _VIEWS[cls] = _derive_view(cls)
    return _VIEWS[cls]


class ViewDecoder:
    """``decode`` that returns envelopes whose ``data`` is a view where the type has one.

    Code that takes these envelopes must only read fields (a view is not a pydantic model)."""

    def __init__(
        self,
        types: Mapping[str, type[Message]] | None = None,
        upcasters: UpcasterTable | None = None,
    ) -> None:
        self._types = MESSAGE_TYPES if types is None else types
        self._upcasters = upcasters
        envelopes = [
            _derive_envelope(cls, view)
            for cls in self._types.values()
            if (view := view_type(cls)) is not None
        ]
        self._decoder: msgspec.json.Decoder[Any] | None = (
            msgspec.json.Decoder(Union[tuple(envelopes)]) if envelopes else None  # noqa: UP007
        )

    def decode_all(
        self,
        values: Sequence[bytes | None],
        on_error: Callable[[int, DecodeError], None],
        headers: Mapping[int, Sequence[tuple[str, bytes]]] | None = None,
    ) -> Iterator[EnvelopeView | Envelope[Any]]:
        """``decode`` of many records, in order; ``headers`` holds the headers of those that
        have any, by index. A record that cannot be read is passed to ``on_error`` with its
        index, and skipped."""
        for index, value in enumerate(values):
            try:
                envelope = self.decode(value, headers.get(index, ()) if headers else ())
            except DecodeError as exc:
                on_error(index, exc)
            else:
                yield envelope

    def decode(
        self, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> EnvelopeView | Envelope[Any]:
        if value is not None and self._decoder is not None and not has_extra_headers(headers):
            try:
                return self._decoder.decode(value)  # type: ignore[no-any-return]
            except (msgspec.ValidationError, msgspec.DecodeError):
                pass  # decode() says what is wrong, or reads what views cannot
        return decode(value, headers, types=self._types, upcasters=self._upcasters)
