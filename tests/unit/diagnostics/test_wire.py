"""The stream's fast reader reads exactly what the contract reads, or declines."""

from __future__ import annotations

import math
import random

import orjson
import pytest

from posttrain.diagnostics.wire import read_metrics
from posttrain.events import Envelope, decode, encode
from posttrain.events.messages import TickClock
from posttrain.events.messages.metrics import CORE_FIELDS, MetricPoint, MetricsReported


def random_report(rng: random.Random) -> MetricsReported:
    points = []
    for step in range(rng.randrange(0, 6)):
        fields = {}
        for name in rng.sample(CORE_FIELDS, rng.randrange(0, len(CORE_FIELDS))):
            fields[name] = rng.choice([rng.gauss(0, 10), math.nan, math.inf, -math.inf, 0.0])
        custom = rng.choice([{}, {"a": 1, "b": [1, 2], "c": "NaN"}])
        points.append(MetricPoint(step=step, timestamp=1e9 + step, custom=custom, **fields))
    return MetricsReported(
        job_id=f"j{rng.randrange(9)}",
        source="s",
        first_seq=rng.randrange(100),
        points=points,
        pipeline_id=rng.choice([None, "p"]),
        stage=rng.choice([None, "sft"]),
        attempt=rng.choice([None, 3]),
    )


def dump(report: MetricsReported) -> dict:
    return orjson.loads(report.model_dump_json())


def test_fast_reader_agrees_with_the_contract_on_generated_messages():
    rng = random.Random(0)
    for _ in range(300):
        envelope = Envelope.create(random_report(rng), key="j")
        _, value, headers = encode(envelope)
        fast = read_metrics(value)
        assert fast is not None
        contract = decode(value, headers)
        assert dump(fast.report) == dump(contract.data)
        assert (fast.envelope_id, fast.key) == (contract.id, contract.key)
        for a, b in zip(fast.report.points, contract.data.points, strict=True):
            for name in CORE_FIELDS:
                x, y = getattr(a, name), getattr(b, name)
                assert (x is None and y is None) or x == y or (math.isnan(x) and math.isnan(y))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["data"]["points"][0].update(loss="1.5"),  # a string pydantic would coerce
        lambda d: d["data"]["points"][0].update(step=1.0),
        lambda d: d["data"]["points"][0].update(custom=[1]),
        lambda d: d["data"].update(first_seq="3"),
        lambda d: d.update(version=1),
        lambda d: d["data"].pop("job_id"),
    ],
)
def test_fast_reader_declines_what_it_cannot_vouch_for(mutate):
    report = MetricsReported(
        job_id="j", source="s", first_seq=0, points=[MetricPoint(step=1, timestamp=1.0, loss=1)]
    )
    doc = orjson.loads(encode(Envelope.create(report, key="j"))[1])
    mutate(doc)
    assert read_metrics(orjson.dumps(doc)) is None


def test_fast_reader_declines_other_types_and_garbage():
    other = encode(Envelope.create(TickClock(pipeline_id="p", now=1.0), key="p"))[1]
    assert read_metrics(other) is None
    assert read_metrics(b"{not json") is None
    assert read_metrics(None) is None
