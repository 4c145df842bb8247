"""Views read exactly what ``decode`` reads, or leave the message to ``decode``."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
import pytest
from pydantic import BaseModel, field_validator

from posttrain.events import DecodeError, Envelope, decode, encode
from posttrain.events.messages import (
    CheckpointSaved,
    PipelineSubmitted,
    RetryPolicy,
    StageFailed,
    StageSpec,
    StageStarted,
)
from posttrain.events.views import EnvelopeView, ViewDecoder, as_model, view_type
from tests.samples import sample_messages

WHEN = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
IDS: dict[str, Any] = {
    "pipeline_id": "p",
    "stage": "s",
    "attempt": 1,
    "command_id": "c",
    "agent_id": "a",
    "job_id": "j",
}  # what every stage event carries


def _wire(message: Any, **kw: Any) -> tuple[bytes, list[tuple[str, bytes]]]:
    envelope = Envelope.create(
        message, key="k-1", id="e-1", occurred_at=WHEN, correlation_id="c-1", **kw
    )
    _, value, headers = encode(envelope)
    return value, headers


@pytest.mark.parametrize("message", sample_messages(), ids=lambda m: m.TYPE)
def test_a_view_reads_every_field_as_decode_does(message):
    value, headers = _wire(message)
    expected = decode(value, headers)
    got = ViewDecoder().decode(value, headers)
    assert (got.id, got.occurred_at, got.key, got.correlation_id, got.causation_id) == (
        expected.id,
        expected.occurred_at,
        expected.key,
        expected.correlation_id,
        expected.causation_id,
    )
    assert got.type == expected.type and dict(got.headers) == dict(expected.headers)
    assert isinstance(got, EnvelopeView)  # every message type has a view
    assert type(got.data) is view_type(type(message))
    assert (got.data.TYPE, got.data.VERSION) == (message.TYPE, message.VERSION)
    # Field by field, nested models included (a nested view holds the nested model's values).
    assert msgspec.to_builtins(got.data) == expected.data.model_dump()
    assert as_model(type(message), got.data) == expected.data


def test_nested_models_are_read_as_their_views():
    spec = StageSpec(name="sft", task="train_model", params={"lr": 1e-3}, depends_on=["prep"])
    value, headers = _wire(
        PipelineSubmitted(pipeline_id="p", name="n", stages=[spec], layers=[["sft"]])
    )
    doc = orjson.loads(value)
    del doc["data"]["stages"][0]["retries"]  # a writer that left a defaulted nested model out
    got = ViewDecoder().decode(orjson.dumps(doc), headers)
    (stage,) = got.data.stages
    assert type(stage) is not StageSpec and stage.name == "sft" and stage.params == {"lr": 1e-3}
    assert stage.retries.max_attempts == RetryPolicy().max_attempts  # the default, as a view
    assert as_model(StageSpec, stage) == spec
    assert as_model(StageSpec, spec) is spec


def test_defaults_of_a_view_are_the_models():
    value, _ = _wire(CheckpointSaved(**IDS, step=3, path="/x"))
    doc = orjson.loads(value)
    del doc["data"]["reason"]  # a writer that left a defaulted field out
    got = ViewDecoder().decode(orjson.dumps(doc))
    assert isinstance(got, EnvelopeView) and got.data.reason == "scheduled"


def test_an_older_version_goes_through_its_upcaster():
    doc = {
        "id": "e",
        "type": "StageFailed",
        "version": 1,
        "occurred_at": WHEN.isoformat(),
        "key": "p",
        "data": {**IDS, "finished_at": 1.0, "error": "CUDA out of memory"},
    }
    got = ViewDecoder().decode(orjson.dumps(doc))
    assert isinstance(got.data, StageFailed)
    assert got.data.kind == decode(orjson.dumps(doc)).data.kind == "oom"


def test_a_nan_in_a_float_field_is_read_by_decode():
    started = StageStarted(**IDS, started_at=float("nan"))
    value, headers = _wire(started)
    got = ViewDecoder().decode(value, headers)
    assert isinstance(got.data, StageStarted) and math.isnan(got.data.started_at)


def test_extra_headers_are_kept():
    value, headers = _wire(sample_messages()[-1], headers={"trace": "t-1"})
    got = ViewDecoder().decode(value, headers)
    assert dict(got.headers) == {"trace": "t-1"}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", "malformed"),
        (
            b'{"id":"e","type":"Nope","version":1,"occurred_at":"2026-01-01T00:00:00+00:00",'
            b'"key":"k","data":{}}',
            "unknown_type",
        ),
        (
            b'{"id":"e","type":"TickClock","version":9,"occurred_at":"2026-01-01T00:00:00+00:00",'
            b'"key":"k","data":{"now":1.0}}',
            "future_version",
        ),
        (
            b'{"id":"e","type":"TickClock","version":1,"occurred_at":"2026-01-01T00:00:00+00:00",'
            b'"key":"k","data":{"now":"soon"}}',
            "invalid",
        ),
        (None, "malformed"),
    ],
)
def test_what_decode_refuses_a_view_refuses_with_the_same_reason(value, reason):
    with pytest.raises(DecodeError) as refused:
        ViewDecoder().decode(value)
    assert refused.value.reason == reason
    errors: list[tuple[int, DecodeError]] = []
    assert list(ViewDecoder().decode_all([value], lambda i, e: errors.append((i, e)))) == []
    assert [(i, e.reason) for i, e in errors] == [(0, reason)]


def test_decode_all_keeps_order_and_reports_errors_by_index():
    good = [_wire(m)[0] for m in sample_messages()[:5]]
    errors: list[tuple[int, str]] = []
    out = list(
        ViewDecoder().decode_all(
            [good[0], b"{", good[1], *good[2:]], lambda i, e: errors.append((i, e.reason))
        )
    )
    assert errors == [(1, "malformed")]
    assert [e.type for e in out] == [m.TYPE for m in sample_messages()[:5]]


def test_fields_the_two_parsers_read_differently_get_no_view():
    from posttrain.events import Message

    class WithBytes(Message):
        TYPE = "TestWithBytes"
        blob: bytes

    class WithTime(Message):
        TYPE = "TestWithTime"
        at: datetime

    class Plain(Message):
        TYPE = "TestPlain"
        names: list[str]
        extra: dict[str, Any] | None = None

    class Checked(BaseModel):
        n: int

        @field_validator("n")
        @classmethod
        def positive(cls, n: int) -> int:
            return abs(n)

    class NestsChecked(Message):
        TYPE = "TestNestsChecked"
        items: list[Checked]

    class NestsTwo(Message):
        TYPE = "TestNestsTwo"
        one: RetryPolicy | StageSpec  # two untagged structs: msgspec could not tell them apart

    assert view_type(WithBytes) is None
    assert view_type(WithTime) is None
    assert view_type(NestsChecked) is None  # a validator may change what it reads
    assert view_type(NestsTwo) is None
    assert view_type(Plain) is not None


def test_metric_points_with_non_finite_floats_are_read_as_views_with_those_floats():
    from posttrain.events.messages import MetricPoint, MetricsReported

    points = [
        MetricPoint(step=1, timestamp=1.5, loss=math.nan, grad_norm=math.inf, custom={"x": 1}),
        MetricPoint(step=2, timestamp=2.5, epoch=-math.inf, loss=0.5),
    ]
    message = MetricsReported(job_id="j", source="s", first_seq=0, points=points)
    value, headers = _wire(message)
    assert b'"NaN"' in value and b'"-Infinity"' in value  # as pydantic writes them
    expected = as_model(MetricsReported, decode(value, headers).data)
    decoder = ViewDecoder()
    for got in (decoder.decode(value, headers), decoder.view(value)):
        assert isinstance(got, EnvelopeView)  # the fast path, not the models
        first, second = got.data.points
        assert math.isnan(first.loss) and first.grad_norm == math.inf and first.custom == {"x": 1}
        assert second.epoch == -math.inf and second.loss == 0.5
        read = as_model(MetricsReported, got.data)
        assert read.model_dump_json() == expected.model_dump_json()
    # A string that is no float is still left to decode, which refuses it.
    bad = value.replace(b'"NaN"', b'"nan?"')
    assert decoder.view(bad) is None
    with pytest.raises(DecodeError):
        decoder.decode(bad, headers)
