"""The fast reader never disagrees with the contract: for any message it vouches for, decoding
through ``posttrain.events`` gives the same rows; for anything else it steps aside."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.events import DecodeError, Envelope, decode, encode
from posttrain.events.messages.metrics import CORE_FIELDS, MetricPoint, MetricsReported
from posttrain.metrics_ingest.core.rows import ROW_COLUMNS, ReportRows, RowError
from posttrain.metrics_ingest.core.wire import read_report, rows_from_message

WHEN = datetime(2026, 1, 1, tzinfo=UTC)

floats = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.integers(-(2**53), 2**53),
)
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),  # integers as every JSON parser reads them
    st.text(max_size=8),
    st.floats(-1e9, 1e9),
)
custom = st.dictionaries(
    st.text(max_size=6),
    st.recursive(json_leaf, lambda c: st.lists(c, max_size=3), max_leaves=4),
    max_size=3,
)


@st.composite
def points(draw: st.DrawFn) -> MetricPoint:
    values = {f: draw(floats) for f in draw(st.sets(st.sampled_from(CORE_FIELDS), max_size=6))}
    return MetricPoint(
        step=draw(st.integers(-(2**62), 2**62)),
        epoch=draw(floats),
        timestamp=draw(st.floats(0, 4e9)),
        custom=draw(custom),
        **values,
    )


@st.composite
def messages(draw: st.DrawFn) -> MetricsReported:
    return MetricsReported(
        job_id=draw(st.text(min_size=1, max_size=10)),
        source=draw(st.text(max_size=10)),
        first_seq=draw(st.integers(0, 2**40)),
        points=draw(st.lists(points(), max_size=5)),
        pipeline_id=draw(st.none() | st.text(max_size=5)),
        stage=draw(st.none() | st.text(max_size=5)),
        attempt=draw(st.none() | st.integers(0, 100)),
    )


def _wire(message: MetricsReported) -> tuple[bytes, list[tuple[str, bytes]]]:
    _, value, headers = encode(Envelope.create(message, key=message.job_id, occurred_at=WHEN))
    return value, headers


def _same(a: ReportRows, b: ReportRows) -> bool:
    def norm(v: Any) -> Any:
        return "nan" if isinstance(v, float) and math.isnan(v) else v

    return a._replace(rows=[]) == b._replace(rows=[]) and [
        tuple(norm(v) for v in r) for r in a.rows
    ] == [tuple(norm(v) for v in r) for r in b.rows]


def _contract(value: bytes, headers: list[tuple[str, bytes]]) -> ReportRows | None:
    try:
        message = decode(value, headers).data
        return rows_from_message(message)
    except (DecodeError, RowError):
        return None


@settings(max_examples=150, deadline=None)
@given(messages())
def test_fast_reader_reads_every_encoded_message_as_the_contract_does(
    message: MetricsReported,
) -> None:
    value, headers = _wire(message)
    contract = _contract(value, headers)
    fast = read_report(value)
    if contract is None:
        # The contract refuses (e.g. a NUL in a name): the fast reader must not accept it.
        assert fast is None
    else:
        assert fast is not None and _same(fast, contract)


def _mutations() -> list[tuple[str, Any]]:
    return [
        ("step", "3"),
        ("step", 3.0),
        ("step", True),
        ("step", 2**64 - 1),
        ("timestamp", "1.5"),
        ("timestamp", None),
        ("loss", " nan "),
        ("loss", True),
        ("loss", "abc"),
        ("loss", [1]),
        ("custom", None),
        ("custom", [1]),
        ("epoch", "NaN"),
        ("grad_norm", "-Infinity"),
    ]


@pytest.mark.parametrize(("field", "new"), _mutations())
def test_fast_reader_steps_aside_or_agrees_on_unusual_values(field: str, new: Any) -> None:
    message = MetricsReported(
        job_id="j", source="s", first_seq=0, points=[MetricPoint(step=1, timestamp=2.0)]
    )
    value, headers = _wire(message)
    doc = orjson.loads(value)
    doc["data"]["points"][0][field] = new
    mutated = orjson.dumps(doc)
    contract = _contract(mutated, headers)
    fast = read_report(mutated)
    if fast is not None:
        assert contract is not None and _same(fast, contract)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(version=1),
        lambda d: d.update(version=3),
        lambda d: d.update(type="TickClock"),
        lambda d: d.update(occurred_at="yesterday"),
        lambda d: d.update(id=5),
        lambda d: d["data"].update(first_seq="0"),
        lambda d: d["data"].update(points={}),
        lambda d: d["data"].update(job_id="a\x00b"),
    ],
)
def test_fast_reader_leaves_other_versions_and_odd_envelopes_to_the_contract(change: Any) -> None:
    message = MetricsReported(
        job_id="j", source="s", first_seq=0, points=[MetricPoint(step=1, timestamp=2.0)]
    )
    doc = orjson.loads(_wire(message)[0])
    change(doc)
    assert read_report(orjson.dumps(doc)) is None


def test_not_json_and_tombstones_are_left_to_the_contract() -> None:
    assert read_report(b"not json") is None
    assert read_report(None) is None
    assert read_report(b"[1, 2]") is None


def test_seq_numbers_follow_first_seq() -> None:
    message = MetricsReported(
        job_id="j",
        source="s",
        first_seq=10,
        points=[MetricPoint(step=s, timestamp=1.0, loss=float(s)) for s in range(3)],
    )
    report = read_report(_wire(message)[0])
    assert report is not None
    assert [(r[0], r[1]) for r in report.rows] == [(10, 0), (11, 1), (12, 2)]


@settings(max_examples=100, deadline=None)
@given(messages(), st.booleans())
def test_fast_reader_agrees_when_a_writer_leaves_nulls_out_or_writes_integers(
    message: MetricsReported, integers: bool
) -> None:
    value, headers = _wire(message)
    doc = orjson.loads(value)
    for p in doc["data"]["points"]:
        for key in [k for k, v in p.items() if v is None]:
            del p[key]
        if integers:
            for key, v in p.items():
                if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
                    p[key] = int(v)
    rewritten = orjson.dumps(doc)
    contract = _contract(rewritten, headers)
    fast = read_report(rewritten)
    if contract is None:
        assert fast is None
    else:
        assert fast is not None and _same(fast, contract)


def test_the_fast_readers_shapes_are_the_contracts() -> None:
    from posttrain.events.views import model_view
    from posttrain.metrics_ingest.core.wire import POINT_FIELDS

    assert tuple(MetricPoint.model_fields) == POINT_FIELDS
    assert model_view(MetricPoint).__struct_fields__ == POINT_FIELDS


def test_a_nan_loss_is_read_by_the_fast_reader_as_nan() -> None:
    message = MetricsReported(
        job_id="j",
        source="s",
        first_seq=0,
        points=[
            MetricPoint(step=1, timestamp=2.0, loss=math.nan, grad_norm=-math.inf),
            MetricPoint(step=2, timestamp=3.0, loss=0.5, custom={"note": "NaN"}),
        ],
    )
    report = read_report(_wire(message)[0])
    assert report is not None
    loss, grad_norm = ROW_COLUMNS.index("loss"), ROW_COLUMNS.index("grad_norm")
    first, second = report.rows
    assert math.isnan(first[loss]) and first[grad_norm] == -math.inf
    assert second[loss] == 0.5 and orjson.loads(second[-1][1:]) == {"note": "NaN"}


def test_a_custom_integer_beyond_64_bits_is_left_to_the_contract() -> None:
    # msgspec keeps the exact integer, orjson (the contract's parser) reads it as a float: the
    # fast reader must step aside rather than disagree.
    message = MetricsReported(
        job_id="j", source="s", first_seq=0, points=[MetricPoint(step=1, timestamp=2.0)]
    )
    value, headers = _wire(message)
    value = value.replace(b'"custom":{}', b'"custom":{"big":100000000000000000000000000000}')
    assert read_report(value) is None
    contract = _contract(value, headers)
    assert contract is not None and orjson.loads(contract.rows[0][-1][1:]) == {"big": 1e29}
