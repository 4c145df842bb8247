"""The wire format without a broker: every type round-trips, bad bytes are named precisely."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import orjson
import pytest

from posttrain.events import MESSAGE_TYPES, DecodeError, Envelope, decode, encode
from posttrain.events.messages import MetricPoint, MetricsReported, StageFailed
from tests.samples import sample_messages

WHEN = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("message", sample_messages(), ids=lambda m: m.TYPE)
def test_every_type_round_trips(message):
    envelope = Envelope.create(
        message,
        key="k-1",
        id="e-1",
        occurred_at=WHEN,
        correlation_id="c-1",
        causation_id="x-1",
        headers={"trace": "abc"},
    )
    key, value, headers = encode(envelope)
    assert key == b"k-1"
    assert ("posttrain-type", message.TYPE.encode()) in headers
    assert decode(value, headers) == envelope


def test_every_registered_type_has_a_sample():
    assert {m.TYPE for m in sample_messages()} == set(MESSAGE_TYPES)


def test_non_finite_metrics_survive_the_wire():
    point = MetricPoint(
        step=3,
        timestamp=1.0,
        loss=float("nan"),
        grad_norm=float("inf"),
        kl_divergence=float("-inf"),
    )
    message = MetricsReported(job_id="j", source="s", first_seq=0, points=[point])
    _, value, headers = encode(Envelope.create(message, key="j"))
    back = decode(value, headers).data.points[0]
    assert math.isnan(back.loss)
    assert back.grad_norm == math.inf
    assert back.kl_divergence == -math.inf
    assert back.reward_mean is None


def _doc(**overrides):
    doc = {
        "id": "e",
        "type": "PipelineSucceeded",
        "version": 1,
        "key": "p",
        "occurred_at": WHEN.isoformat(),
        "data": {"pipeline_id": "p"},
    }
    doc.update(overrides)
    return orjson.dumps(doc)


@pytest.mark.parametrize(
    ("value", "reason", "fragment"),
    [
        (b"\x00\xffnot json", "malformed", "not JSON"),
        (b"[1, 2]", "malformed", "JSON object"),
        (None, "malformed", "tombstone"),
        (_doc(type="NoSuchThing"), "unknown_type", "NoSuchThing"),
        (_doc(version=9), "future_version", "v9 is newer than this reader's v1"),
        (_doc(data={"wrong": 1}), "invalid", "pipeline_id"),
        (_doc(occurred_at="yesterday"), "malformed", "occurred_at"),
    ],
)
def test_bad_values_are_rejected_with_a_reason(value, reason, fragment):
    with pytest.raises(DecodeError) as info:
        decode(value)
    assert info.value.reason == reason
    assert fragment in str(info.value)


def test_v1_stage_failed_is_read_as_v2():
    v1 = _doc(
        type="StageFailed",
        version=1,
        data={
            "pipeline_id": "p",
            "stage": "sft",
            "attempt": 1,
            "command_id": "c",
            "agent_id": "a",
            "job_id": "j",
            "finished_at": 2.0,
            "error": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB",
        },
    )
    message = decode(v1).data
    assert isinstance(message, StageFailed)
    assert message.kind == "oom"
    assert message.error.startswith("torch.OutOfMemoryError")
