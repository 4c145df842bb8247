"""The upcaster chain: an old payload is carried version by version to the current one."""

from __future__ import annotations

from typing import ClassVar

import orjson
import pytest

from posttrain.events import DecodeError, Message, decode
from posttrain.events.messages import AgentHeartbeat, MetricsReported
from posttrain.events.upcasters import MissingUpcaster, upcast


class Renamed(Message):
    TYPE: ClassVar[str] = "Renamed"
    VERSION: ClassVar[int] = 3

    full_name: str
    tags: list[str]


CHAIN = {
    ("Renamed", 1): lambda d: {"full_name": d["name"], "tags": d.get("tags", "")},
    ("Renamed", 2): lambda d: {**d, "tags": [t for t in d["tags"].split(",") if t]},
}


def _payload(type_name: str, version: int, data: dict) -> bytes:
    return orjson.dumps(
        {
            "id": "e",
            "type": type_name,
            "version": version,
            "key": "k",
            "occurred_at": "2026-11-28T00:00:00+00:00",
            "data": data,
        }
    )


def test_chain_applies_every_step_in_order():
    assert upcast("Renamed", {"name": "x", "tags": "a,b"}, 1, 3, CHAIN) == {
        "full_name": "x",
        "tags": ["a", "b"],
    }


def test_decode_reads_v1_as_current_through_the_chain():
    message = decode(
        _payload("Renamed", 1, {"name": "x", "tags": "gpu,a100"}),
        types={"Renamed": Renamed},
        upcasters=CHAIN,
    ).data
    assert message == Renamed(full_name="x", tags=["gpu", "a100"])


def test_a_gap_in_the_chain_is_an_invalid_message():
    with pytest.raises(MissingUpcaster):
        upcast("Renamed", {"name": "x"}, 1, 3, {("Renamed", 1): CHAIN[("Renamed", 1)]})
    with pytest.raises(DecodeError) as info:
        decode(_payload("Renamed", 1, {"name": "x"}), types={"Renamed": Renamed}, upcasters={})
    assert info.value.reason == "invalid"


def test_heartbeat_v1_labels_and_free_gpus():
    beat = decode(
        _payload(
            "AgentHeartbeat",
            1,
            {
                "agent_id": "a",
                "host": "h",
                "gpus": 4,
                "labels": "a100, big",
                "running": ["c1"],
                "sent_at": 1.0,
            },
        )
    ).data
    assert isinstance(beat, AgentHeartbeat)
    assert beat.labels == ["a100", "big"]
    assert beat.free_gpus == 3


def test_metrics_v1_job_uuid_becomes_job_id_with_an_idempotency_key():
    batch = decode(
        _payload(
            "MetricsReported",
            1,
            {
                "job_uuid": "zzz2",
                "points": [{"step": 5, "timestamp": 1.0, "loss": 0.5}],
            },
        )
    ).data
    assert isinstance(batch, MetricsReported)
    assert batch.job_id == "zzz2"
    assert (batch.source, batch.first_seq) == ("v1:5", 0)
    assert batch.points[0].loss == 0.5
