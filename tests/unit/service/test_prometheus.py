"""The /metrics text every service writes, through prometheus_client: families, constant
labels, escaping, instruments such as histograms, and values."""

from __future__ import annotations

import math

import pytest
from prometheus_client import Histogram

from posttrain.service.prometheus import Exposition
from tests.prometheus import families, samples


def test_a_family_declares_help_and_type_then_its_samples_with_constant_labels() -> None:
    text = Exposition("posttrain_x", labels={"agent": "gpu-1"})
    text.add("up", "gauge", "1 while alive.", 1)
    text.add("commands_total", "counter", "Commands, by type.", [({"type": "RunStage"}, 2)])
    assert text.render() == (
        "# HELP posttrain_x_up 1 while alive.\n"
        "# TYPE posttrain_x_up gauge\n"
        'posttrain_x_up{agent="gpu-1"} 1.0\n'
        "# HELP posttrain_x_commands_total Commands, by type.\n"
        "# TYPE posttrain_x_commands_total counter\n"
        'posttrain_x_commands_total{agent="gpu-1",type="RunStage"} 2.0\n'
    )


def test_a_family_with_no_samples_yet_is_still_declared() -> None:
    text = Exposition("p")
    text.add("outcomes_total", "counter", "By outcome.", [])
    assert text.render() == "# HELP p_outcomes_total By outcome.\n# TYPE p_outcomes_total counter\n"
    assert families(text.render()) == {"p_outcomes": "counter"}


def test_a_counter_is_named_for_its_samples() -> None:
    with pytest.raises(ValueError, match="ends in _total"):
        Exposition("p").add("launches", "counter", "Launches.", 1)


def test_label_values_and_help_are_escaped_and_read_back_as_written() -> None:
    text = Exposition("p")
    text.add("lag", "gauge", "one\\two\nthree", [({"topic": 'a"b\\c\nd', "partition": "1"}, 7)])
    rendered = text.render()
    assert rendered.splitlines()[0] == "# HELP p_lag one\\\\two\\nthree"
    assert rendered.splitlines()[-1] == 'p_lag{partition="1",topic="a\\"b\\\\c\\nd"} 7.0'
    assert samples(rendered) == {'p_lag{partition="1",topic="a"b\\c\nd"}': 7}


def test_an_instrument_is_named_under_the_prefix_with_the_constant_labels() -> None:
    rows = Histogram("batch_rows", "Rows per batch.", buckets=(1, 10), registry=None)
    for value in (1, 1, 500, 600, 133):
        rows.observe(value)
    text = Exposition("p", labels={"agent": "a"})
    text.collect_from(rows)
    got = samples(text.render())
    assert got == {
        'p_batch_rows_bucket{agent="a",le="1.0"}': 2,
        'p_batch_rows_bucket{agent="a",le="10.0"}': 2,
        'p_batch_rows_bucket{agent="a",le="+Inf"}': 5,
        'p_batch_rows_count{agent="a"}': 5,
        'p_batch_rows_sum{agent="a"}': 1235,
    }


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3, "3.0"),
        (True, "1.0"),
        (0.25, "0.25"),
        (math.nan, "NaN"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
    ],
)
def test_values(value: float, text: str) -> None:
    exposition = Exposition("p")
    exposition.add("x", "gauge", "X.", value)
    assert exposition.render().splitlines()[-1] == f"p_x {text}"
