"""The wire format: an envelope as one orjson document, with its type and version in headers too.

``decode`` never lets a bad message pass silently: it raises ``DecodeError`` whose ``reason`` says
what was wrong, which consumers put on the dead-letter topic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import orjson
from pydantic import ValidationError

from posttrain.events.envelope import NO_HEADERS, Envelope, new_id
from posttrain.events.messages import MESSAGE_TYPES, Message
from posttrain.events.upcasters import MissingUpcaster, UpcasterTable, upcast

HEADER_TYPE = "posttrain-type"
HEADER_VERSION = "posttrain-version"
HEADER_CONTENT_TYPE = "content-type"
CONTENT_TYPE = b"application/json"
_RESERVED = {HEADER_TYPE, HEADER_VERSION, HEADER_CONTENT_TYPE}
OWN_HEADER_COUNT = len(_RESERVED)  # the headers every record from ``encode`` carries

KafkaHeaders = list[tuple[str, bytes]]


class DecodeError(ValueError):
    """A message that cannot be read. ``reason`` is one of: malformed, unknown_type,
    future_version, invalid."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode(envelope: Envelope[Any]) -> tuple[bytes, bytes, KafkaHeaders]:
    """The Kafka key, value and headers of an envelope."""
    data = envelope.data
    # pydantic writes the payload itself: it keeps NaN/inf as "NaN"/"Infinity" strings, where
    # orjson would silently write null (and a NaN loss must never become a missing loss). Its
    # serializer's bytes as they are: ``model_dump_json`` would decode them to a str that is
    # encoded straight back.
    return encode_written(
        type(data),
        data.__pydantic_serializer__.to_json(data),
        key=envelope.key,
        id=envelope.id,
        occurred_at=envelope.occurred_at,
        correlation_id=envelope.correlation_id,
        causation_id=envelope.causation_id,
        headers=envelope.headers,
    )


def encode_written(
    cls: type[Message],
    data_json: bytes,
    *,
    key: str,
    id: str | None = None,
    occurred_at: datetime | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    headers: Mapping[str, str] = NO_HEADERS,
) -> tuple[bytes, bytes, KafkaHeaders]:
    """``encode`` for a payload of type ``cls`` already written as JSON: by its model, or by a
    fast writer (``writers``) that tests hold to what the model writes."""
    head = orjson.dumps(
        {
            "id": id if id is not None else new_id(),
            "type": cls.TYPE,
            "version": cls.VERSION,
            "occurred_at": occurred_at if occurred_at is not None else datetime.now(UTC),
            "key": key,
            "correlation_id": correlation_id,
            "causation_id": causation_id,
        }
    )
    value = head[:-1] + b',"data":' + data_json + b"}"
    kafka_headers = _type_headers(cls)
    if headers:
        kafka_headers = kafka_headers + [(k, v.encode()) for k, v in headers.items()]
    return key.encode(), value, kafka_headers


_TYPE_HEADERS: dict[type[Message], KafkaHeaders] = {}


def _type_headers(cls: type[Message]) -> KafkaHeaders:
    # The same three headers for every message of a type: built once. Callers never mutate it.
    headers = _TYPE_HEADERS.get(cls)
    if headers is None:
        headers = [
            (HEADER_TYPE, cls.TYPE.encode()),
            (HEADER_VERSION, str(cls.VERSION).encode()),
            (HEADER_CONTENT_TYPE, CONTENT_TYPE),
        ]
        _TYPE_HEADERS[cls] = headers
    return headers


def decode(
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]] = (),
    *,
    types: Mapping[str, type[Message]] | None = None,
    upcasters: UpcasterTable | None = None,
) -> Envelope[Any]:
    """Read an envelope, upcasting older versions of its type to the current one."""
    registry = MESSAGE_TYPES if types is None else types
    if value is None:
        raise DecodeError("malformed", "empty value (tombstone)")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("malformed", f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise DecodeError("malformed", f"expected a JSON object, got {type(doc).__name__}")
    type_name = doc.get("type")
    version = doc.get("version")
    data = doc.get("data")
    if not isinstance(type_name, str) or not isinstance(version, int) or not isinstance(data, dict):
        raise DecodeError("malformed", "envelope needs string 'type', int 'version', object 'data'")
    cls = registry.get(type_name)
    if cls is None:
        raise DecodeError("unknown_type", f"unknown message type {type_name!r}")
    if version > cls.VERSION:
        raise DecodeError(
            "future_version",
            f"{type_name} v{version} is newer than this reader's v{cls.VERSION}: "
            "upgrade the reader",
        )
    if version < 1:
        raise DecodeError("malformed", f"{type_name} has invalid version {version}")
    try:
        if version < cls.VERSION:
            data = upcast(type_name, data, version, cls.VERSION, upcasters)
        # ``model_validate`` without its Python-level wrapper: a third of a small message's
        # validation, on every message every consumer reads.
        message = cls.__pydantic_validator__.validate_python(data)
    except MissingUpcaster as exc:
        raise DecodeError("invalid", str(exc)) from None
    except ValidationError as exc:
        raise DecodeError("invalid", f"{type_name} v{version}: {_short(exc)}") from None
    envelope_id = doc.get("id")
    key = doc.get("key")
    if not isinstance(envelope_id, str) or not isinstance(key, str):
        raise DecodeError("malformed", "envelope 'id' and 'key' must be strings")
    try:
        occurred_at = datetime.fromisoformat(doc.get("occurred_at", ""))
    except (TypeError, ValueError):
        raise DecodeError(
            "malformed",
            f"envelope 'occurred_at' is not an ISO 8601 time: {doc.get('occurred_at')!r}",
        ) from None
    # Most messages carry only our three headers: skip building a dict for them.
    extra = (
        {k: v.decode("utf-8", "replace") for k, v in headers if k not in _RESERVED}
        if has_extra_headers(headers)
        else None
    )
    # Positionally, in the fields' order, without the generated ``__new__`` (half the cost).
    return Envelope._make(
        (
            envelope_id,
            occurred_at,
            key,
            message,
            doc.get("correlation_id"),
            doc.get("causation_id"),
            MappingProxyType(extra) if extra else NO_HEADERS,
        )
    )


def has_extra_headers(headers: Sequence[tuple[str, bytes]]) -> bool:
    """Whether a record's headers may carry more than its type, version and content type: only
    then does ``decode`` read them (a record from this codec carries exactly those three)."""
    return len(headers) > OWN_HEADER_COUNT


def _short(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
