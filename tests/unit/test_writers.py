"""The fast metrics writer writes what the models write: ``decode`` and the views read the same."""

from __future__ import annotations

import math
from typing import Any

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from posttrain.events import Envelope, decode, encode
from posttrain.events.aliases import ALIASES, canonical_fields
from posttrain.events.messages import CORE_FIELDS, MetricPoint, MetricsReported
from posttrain.events.views import ViewDecoder, as_model
from posttrain.events.writers import (
    logged_step,
    metrics_reported,
    point_document,
    step_document,
    step_points,
)

floats = st.floats(allow_nan=True, allow_infinity=True)
json_leaf = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | floats | st.text()
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
points = st.fixed_dictionaries(
    {
        "step": st.integers(0, 2**40),
        "epoch": st.none() | floats | st.integers(0, 1000),
        "timestamp": floats,
        "canonical": st.dictionaries(st.sampled_from(CORE_FIELDS), floats),
        "custom": st.dictionaries(st.text(min_size=1), json_value, max_size=4),
    }
)


def _same(message: MetricsReported) -> str:
    # NaN != NaN: compare what the model writes, which spells every value out.
    return message.model_dump_json()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(points, min_size=1, max_size=5),
    st.none() | st.text(min_size=1),
    st.none() | st.integers(1, 9),
)
def test_the_fast_writer_and_the_models_write_the_same_message(
    raw: list[dict[str, Any]], pipeline_id: str | None, attempt: int | None
) -> None:
    documents = [
        point_document(p["step"], p["epoch"], p["timestamp"], p["canonical"], p["custom"])
        for p in raw
    ]
    assert all(d is not None for d in documents)
    record = metrics_reported(
        "job-1", "src", 7, documents, pipeline_id=pipeline_id, stage="sft", attempt=attempt
    )
    assert record is not None
    key, value, headers = record

    model = MetricsReported(
        job_id="job-1",
        source="src",
        first_seq=7,
        points=[
            MetricPoint(
                step=p["step"],
                epoch=p["epoch"],
                timestamp=p["timestamp"],
                custom=p["custom"],
                **p["canonical"],
            )
            for p in raw
        ],
        pipeline_id=pipeline_id,
        stage="sft",
        attempt=attempt,
    )
    m_key, m_value, m_headers = encode(Envelope.create(model, key="job-1"))
    assert (key, headers) == (m_key, m_headers)

    fast, slow = decode(value, headers).data, decode(m_value, m_headers).data
    assert _same(fast) == _same(slow)
    view = ViewDecoder().decode(value, headers).data
    assert _same(as_model(MetricsReported, view)) == _same(slow)


def test_non_finite_values_are_written_as_text_not_null() -> None:
    document = point_document(
        3, math.nan, 1.0, {"loss": math.nan, "kl_divergence": math.inf}, {"x": [-math.inf]}
    )
    record = metrics_reported("j", "s", 0, [document])
    assert record is not None
    assert b'"loss":"NaN"' in record[1] and b'"kl_divergence":"Infinity"' in record[1]
    assert b'"x":["-Infinity"]' in record[1] and b'"epoch":"NaN"' in record[1]
    point = decode(record[1], record[2]).data.points[0]
    assert math.isnan(point.loss) and point.kl_divergence == math.inf


def test_values_of_unusual_kinds_are_left_to_the_model() -> None:
    assert point_document(True, None, 1.0, {}, {}) is None  # a bool is no step
    assert point_document(1.0, None, 1.0, {}, {}) is None  # the model judges 1.0
    assert point_document(1, "0.5", 1.0, {}, {}) is None
    assert point_document(1, None, 1, {}, {}) is None
    assert point_document(1, None, 1.0, {"loss": 1}, {}) is None
    assert point_document(1, None, 1.0, {"not_a_field": 1.0}, {}) is None


def test_an_integer_beyond_64_bits_is_left_to_the_model() -> None:
    document = point_document(1, None, 1.0, {}, {"big": 2**70})
    assert document is not None
    assert metrics_reported("j", "s", 0, [document]) is None


# Names a training loop logs: every alias (so losing aliases and coordinates are met), a few of
# its own, and the nested ``custom`` the general way reads.
logged_names = st.sampled_from(
    [
        *sorted({name for names in ALIASES.values() for name in names}),
        *("timestamp", "my_metric", "tokens", "custom"),
    ]
)
logged_values = floats | st.integers(-5, 5) | st.booleans() | st.none() | st.text(max_size=2)


@settings(max_examples=500, deadline=None)
@given(
    st.integers(0, 2**40) | st.floats(0, 10),
    st.none() | floats | st.integers(0, 9),
    floats,
    st.dictionaries(logged_names, logged_values, max_size=8)
    | st.dictionaries(logged_names, st.floats(-1e6, 1e6), max_size=8),
)
@example(0, None, 1000.0, {"loss": 9e307, "my_metric": 9e307})
def test_a_step_is_written_as_its_names_are_mapped_or_left_to_the_general_way(
    step: Any, epoch: Any, timestamp: float, fields: dict[str, Any]
) -> None:
    """``step_document`` writes what ``canonical_fields`` then ``point_document`` write, and
    takes every step of an int, float times and finite floats under names of their own, however
    large (two of 9e307 overflow the sum it checks them with first)."""
    fast = step_document(step, epoch, timestamp, fields)
    canonical, custom = canonical_fields(fields)
    general = point_document(step, epoch, timestamp, canonical, custom)
    plain = (
        type(step) is int
        and (epoch is None or (type(epoch) is float and math.isfinite(epoch)))
        and math.isfinite(timestamp)
        and "custom" not in fields
        and all(type(v) is float and math.isfinite(v) for v in fields.values())
    )
    if plain:
        assert fast is not None
    if fast is not None:
        assert general is not None
        assert orjson.loads(orjson.dumps(fast)) == orjson.loads(orjson.dumps(general))


def test_a_step_of_the_usual_kind_is_mapped_by_the_fast_writer() -> None:
    fields = {"loss": 0.5, "lr": 1e-5, "reward": 0.9, "kl": 0.01, "tokens": 100.0}
    document = step_document(3, 0.25, 1000.0, fields)
    assert document == {
        "step": 3,
        "epoch": 0.25,
        "timestamp": 1000.0,
        "loss": 0.5,
        "learning_rate": 1e-5,
        "reward_mean": 0.9,
        "kl_divergence": 0.01,
        "custom": {"tokens": 100.0},
    }
    assert step_document(3, None, 1000.0, {"loss": math.nan}) is None  # the general way
    assert step_document(3, None, 1000.0, {"loss": 1}) is None  # an int: the general way
    assert step_document(3, None, 1000.0, {}) == {
        "step": 3,
        "epoch": None,
        "timestamp": 1000.0,
        "custom": {},
    }


steps_logged = st.tuples(
    st.integers(-(2**63), 2**64) | st.floats(0, 10) | st.booleans(),
    st.none() | floats | st.integers(0, 9),
    floats,
    st.dictionaries(logged_names | st.text(max_size=3), logged_values, max_size=6)
    | st.dictionaries(logged_names | st.just("100%"), st.floats(-1e300, 1e300), max_size=6),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(steps_logged, min_size=1, max_size=6))
# Found by hypothesis in CI: each timestamp finite, their sum not.
@example([(0, None, 8.98846567431158e307, {"actor/grad_norm": 0.0})] * 2)
def test_a_run_of_steps_is_written_as_each_step_is_or_left_to_be_written_one_by_one(
    steps: list[tuple[Any, Any, float, dict[str, Any]]],
) -> None:
    """``step_points`` writes the array of what ``step_document`` writes for each step, and
    takes every run whose steps ``step_document`` takes (an int step within 64 bits)."""
    fast = step_points([logged_step(*step) for step in steps])
    each = [step_document(*step) for step in steps]
    if all(d is not None for d in each) and all(-(2**63) <= s[0] < 2**63 for s in steps):
        assert fast is not None
    if fast is not None:
        assert all(d is not None for d in each)
        assert orjson.loads(orjson.dumps(fast)) == orjson.loads(orjson.dumps(each))


def test_a_run_written_whole_is_read_back_as_the_models_write_it() -> None:
    steps = [
        (0, None, 1000.0, {"loss": 0.5, "lr": 1e-5, "my metric %d": 3.0}),
        (1, 0.5, 1001.0, {"loss": 0.25, "lr": 1e-5, "my metric %d": 2.0}),
        (2, 1.0, 1002.0, {"eval/loss": 0.75}),  # other names: another template
    ]
    points = step_points([logged_step(*step) for step in steps])
    assert points is not None
    record = metrics_reported("job-1", "src", 5, points)
    assert record is not None
    read = decode(record[1], record[2]).data
    assert [p.step for p in read.points] == [0, 1, 2]
    assert read.points[1].loss == 0.25 and read.points[1].epoch == 0.5
    assert read.points[0].learning_rate == 1e-5 and read.points[0].custom == {"my metric %d": 3.0}
    assert read.points[2].eval_loss == 0.75 and read.points[2].custom == {}
    assert step_points([logged_step(0, None, 1.0, {"loss": math.nan})]) is None
    assert step_points([logged_step(0, None, 1.0, {"custom": {"a": 1.0}})]) is None
