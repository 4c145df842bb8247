"""Read-only views of messages, decoded in one pass: for readers that fold whole logs.

``decode`` builds a validated pydantic model for every message, about 6 us each, most of it
validation. A reader that folds a million events (the orchestrator rebuilding its state) only
reads field values. For each message type whose fields are plain JSON values, or models of them
(a pipeline's stage specs), a view is a frozen msgspec Struct derived from the model here, at
import: the same field names, types and defaults (a nested model's view in place of the model),
and the model's ``TYPE`` and ``VERSION``. ``ViewDecoder`` reads an envelope and its view in one
msgspec pass (about 1 us; a pipeline of eight stages in 5 us instead of 55). ``as_model`` turns a
view into its model where one is needed later.

A view is only ever a faster way to the same values: whatever the view decoder is not sure of goes
through ``decode`` unchanged, so that a view never accepts what ``decode`` refuses nor reads a value
differently. That covers another version of the type (an upcaster must run), models with
validators, aliases or another ``extra`` policy, and any value msgspec's strict types refuse where
pydantic's lax ones might accept it (a NaN written as the string "NaN" into a float field, an int
written as 1.0). One difference is left, on purpose: an integer beyond 64 bits, which orjson (and
so ``decode``) rounds to a float and msgspec reads exactly; nothing posttrain writes holds one.

Metric points are the exception to "a string in a float field goes through ``decode``": a run
whose loss went NaN writes ``"NaN"`` (``nonfinite``) at every step from then on, and the ingest
and the diagnostics read every point. ``MetricsReported`` has a second view whose float fields
also take those strings, tried when the first refuses a message that holds one; its points come
out with the floats the strings stand for, as ``decode`` reads them. ``ViewDecoder.view`` is the
fast path alone, for readers that go their own way when it answers None.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from functools import cache
from types import UnionType
from typing import Any, Literal, TypeVar, Union, cast, get_args, get_origin

import msgspec
from pydantic import BaseModel

from posttrain.events.codec import DecodeError, decode, has_extra_headers
from posttrain.events.envelope import NO_HEADERS, Envelope
from posttrain.events.messages import MESSAGE_TYPES, Message
from posttrain.events.messages.metrics import MetricPoint, MetricsReported
from posttrain.events.nonfinite import NON_FINITE, NonFiniteText
from posttrain.events.upcasters import UpcasterTable

# The only leaf types a view takes: msgspec and pydantic read JSON into them alike. (Not bytes:
# msgspec expects base64; not datetime: the two parsers accept different forms.)
_PLAIN_LEAVES: frozenset[Any] = frozenset({str, int, float, bool, type(None), Any})


class _NotPlain(Exception):
    """A type msgspec might read differently from pydantic: its messages get no view."""


def _view_annotation(annotation: Any) -> Any:
    """The annotation a view declares for a model field's: the same, with every nested model
    replaced by its view. Raises _NotPlain where the two parsers might read a value differently."""
    origin = get_origin(annotation)
    if origin is None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return model_view(annotation)
        if annotation in _PLAIN_LEAVES:
            return annotation
        raise _NotPlain(annotation)
    if origin is Literal:
        return annotation
    args = tuple(_view_annotation(arg) for arg in get_args(annotation))
    if origin in (Union, UnionType):
        if sum(isinstance(a, type) and issubclass(a, msgspec.Struct) for a in args) > 1:
            raise _NotPlain(annotation)  # untagged structs in one union: msgspec cannot choose
        return Union[args]  # noqa: UP007
    if origin is list:
        return list[args[0]]  # type: ignore[valid-type]
    if origin is dict:
        return dict[args[0], args[1]]  # type: ignore[valid-type]
    raise _NotPlain(annotation)


def _view_fields(cls: type[BaseModel]) -> list[tuple[str, Any] | tuple[str, Any, Any]]:
    """msgspec field definitions with the model's names, types and defaults."""
    config = cls.model_config
    decorators = cls.__pydantic_decorators__
    if (
        config.get("extra", "ignore") != "ignore"  # msgspec ignores unknown fields
        or config.get("strict")
        or decorators.validators
        or decorators.field_validators
        or decorators.root_validators
        or decorators.model_validators
    ):
        raise _NotPlain(cls)  # a validator may change or refuse what msgspec reads as is
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for name, info in cls.model_fields.items():
        if info.alias is not None:
            raise _NotPlain(cls)
        annotation = _view_annotation(info.annotation)
        if info.default_factory is not None:
            if info.default_factory_takes_validated_data:
                raise _NotPlain(cls)
            factory = cast(Callable[[], Any], info.default_factory)
            if isinstance(factory, type) and issubclass(factory, BaseModel):
                factory = model_view(factory)  # a default nested model: its view, defaulted
            fields.append((name, annotation, msgspec.field(default_factory=factory)))
        elif info.is_required():
            fields.append((name, annotation))
        elif isinstance(info.default, BaseModel):
            raise _NotPlain(cls)
        else:
            fields.append((name, annotation, info.default))
    return fields


_NESTED: dict[type[BaseModel], type[msgspec.Struct]] = {}


def model_view(cls: type[BaseModel]) -> type[msgspec.Struct]:
    """The view of a model nested in messages (a stage spec in a pipeline)."""
    if cls not in _NESTED:
        _NESTED[cls] = msgspec.defstruct(
            f"{cls.__name__}View", _view_fields(cls), kw_only=True, frozen=True, module=__name__
        )
    return _NESTED[cls]


def _derive_view(cls: type[Message]) -> type[msgspec.Struct] | None:
    try:
        fields = _view_fields(cls)
    except _NotPlain:
        return None
    return msgspec.defstruct(
        f"{cls.__name__}View",
        fields,
        kw_only=True,
        frozen=True,
        module=__name__,
        namespace={"TYPE": cls.TYPE, "VERSION": cls.VERSION},
    )


M = TypeVar("M", bound=BaseModel)


def as_model(cls: type[M], value: M | msgspec.Struct) -> M:
    """The model of a view's values (a model is returned as it is): for code that keeps what it
    read as a view and needs the model later, or rarely."""
    if isinstance(value, cls):
        return value
    return cls.model_validate(msgspec.to_builtins(value))


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


@cache  # one class per message type: every decoder of it shares it (and msgspec's type info)
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


def _with_text(annotation: Any) -> Any:
    """A float annotation that also takes the non-finite strings."""
    if annotation is float:
        return float | NonFiniteText
    args = get_args(annotation)
    if get_origin(annotation) in (Union, UnionType) and float in args:
        return Union[(*args, NonFiniteText)]
    return annotation


@cache
def _non_finite_metrics() -> tuple[type[EnvelopeView], tuple[str, ...]] | None:
    """The envelope view of ``MetricsReported`` whose points' float fields also take the
    non-finite strings, and the names of those fields."""
    if view_type(MetricsReported) is None:
        return None
    fields = _view_fields(MetricPoint)
    point = msgspec.defstruct(
        "MetricPointTextView",
        [(f[0], _with_text(f[1]), *f[2:]) for f in fields],
        kw_only=True,
        module=__name__,
    )
    report = msgspec.defstruct(
        "MetricsReportedTextView",
        [
            (f[0], list[point] if f[0] == "points" else f[1], *f[2:])  # type: ignore[valid-type]
            for f in _view_fields(MetricsReported)
        ],
        kw_only=True,
        module=__name__,
        namespace={"TYPE": MetricsReported.TYPE, "VERSION": MetricsReported.VERSION},
    )
    floats = tuple(f[0] for f in fields if _with_text(f[1]) is not f[1])
    return _derive_envelope(MetricsReported, report), floats


def _may_hold_non_finite(value: bytes) -> bool:
    return b'NaN"' in value or b'Infinity"' in value


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
        text = (
            _non_finite_metrics()
            if self._types.get(MetricsReported.TYPE) is MetricsReported
            else None
        )
        self._text_decoder: msgspec.json.Decoder[Any] | None = None
        self._text_floats: tuple[str, ...] = ()
        if text is not None:
            self._text_decoder = msgspec.json.Decoder(text[0])
            self._text_floats = text[1]

    def view(self, value: bytes | None) -> EnvelopeView | None:
        """The envelope of ``value`` read with its view, or None where the view decoder is not
        sure of it (``decode`` then reads it, or says what is wrong)."""
        if value is None or self._decoder is None:
            return None
        try:
            return self._decoder.decode(value)  # type: ignore[no-any-return]
        except (msgspec.ValidationError, msgspec.DecodeError):
            return self._non_finite(value)

    def _non_finite(self, value: bytes) -> EnvelopeView | None:
        """A ``MetricsReported`` whose points hold non-finite strings, with their floats."""
        if self._text_decoder is None or not _may_hold_non_finite(value):
            return None
        try:
            envelope = self._text_decoder.decode(value)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None
        for point in envelope.data.points:
            for name in self._text_floats:
                if type(text := getattr(point, name)) is str:
                    setattr(point, name, NON_FINITE[text])
        return envelope  # type: ignore[no-any-return]

    def decode_all(
        self,
        values: Sequence[bytes | None],
        on_error: Callable[[int, DecodeError], None],
        headers: Mapping[int, Sequence[tuple[str, bytes]]] | None = None,
    ) -> Iterator[EnvelopeView | Envelope[Any]]:
        """``decode`` of many records, in order; ``headers`` holds the headers of those that
        have any, by index. A record that cannot be read is passed to ``on_error`` with its
        index, and skipped."""
        # ``decode`` inlined for the common record (no extra headers, read by a view): a
        # function call per record is a tenth of a replay's decoding.
        read = self._decoder.decode if self._decoder is not None else None
        for index, value in enumerate(values):
            record_headers = headers.get(index, ()) if headers else ()
            if (
                read is not None
                and value is not None
                and not (record_headers and has_extra_headers(record_headers))
            ):
                try:
                    view = read(value)
                except (msgspec.ValidationError, msgspec.DecodeError):
                    # A NaN in a metric point, or decode() below says what is wrong, or reads
                    # what views cannot.
                    view = self._non_finite(value)
                if view is not None:
                    yield view
                    continue
            try:
                envelope = decode(
                    value, record_headers, types=self._types, upcasters=self._upcasters
                )
            except DecodeError as exc:
                on_error(index, exc)
            else:
                yield envelope

    def decode(
        self, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> EnvelopeView | Envelope[Any]:
        if not has_extra_headers(headers) and (view := self.view(value)) is not None:
            return view
        return decode(value, headers, types=self._types, upcasters=self._upcasters)
