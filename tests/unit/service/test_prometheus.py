"""The Prometheus text every service writes: families, labels, escaping, histograms, values."""

from __future__ import annotations

import math

import pytest

from posttrain.service.prometheus import Exposition, escape, number


def test_a_family_declares_help_and_type_then_its_samples_with_constant_labels() -> None:
    text = Exposition("posttrain_x", labels={"agent": "gpu-1"})
    text.add("up", "gauge", "1 while alive.", 1)
    text.add("commands_total", "counter", "Commands, by type.", [({"type": "RunStage"}, 2)])
    assert text.render() == (
        "# HELP posttrain_x_up 1 while alive.\n"
        "# TYPE posttrain_x_up gauge\n"
        'posttrain_x_up{agent="gpu-1"} 1\n'
        "# HELP posttrain_x_commands_total Commands, by type.\n"
        "# TYPE posttrain_x_commands_total counter\n"
        'posttrain_x_commands_total{agent="gpu-1",type="RunStage"} 2\n'
    )


def test_a_family_with_no_samples_yet_is_still_declared() -> None:
    text = Exposition("p")
    text.add("outcomes_total", "counter", "By outcome.", [])
    assert text.render() == "# HELP p_outcomes_total By outcome.\n# TYPE p_outcomes_total counter\n"


def test_labels_are_written_in_name_order_and_their_values_escaped() -> None:
    text = Exposition("p")
    text.add("lag", "gauge", "Lag.", [({"topic": 'a"b\\c\nd', "partition": "1"}, 7)])
    assert text.render().splitlines()[-1] == 'p_lag{partition="1",topic="a\\"b\\\\c\\nd"} 7'


def test_help_text_escapes_backslash_and_newline() -> None:
    text = Exposition("p")
    text.add("x", "gauge", "one\\two\nthree", 0)
    assert text.render().splitlines()[0] == "# HELP p_x one\\\\two\\nthree"


def test_a_histogram_is_cumulative_with_inf_sum_and_count() -> None:
    text = Exposition("p")
    text.histogram("batch_rows", "Rows per batch.", (1, 10), [2, 0, 3], 1234)
    assert text.render().splitlines()[2:] == [
        'p_batch_rows_bucket{le="1"} 2',
        'p_batch_rows_bucket{le="10"} 2',
        'p_batch_rows_bucket{le="+Inf"} 5',
        "p_batch_rows_sum 1234",
        "p_batch_rows_count 5",
    ]


def test_a_histogram_needs_one_count_more_than_its_bounds() -> None:
    with pytest.raises(ValueError, match="2 bounds need 3 counts"):
        Exposition("p").histogram("h", "H.", (1, 2), [1, 2], 0)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3, "3"),
        (True, "1"),
        (False, "0"),
        (0.25, "0.25"),
        (1950.0, "1950.0"),
        (math.nan, "NaN"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
    ],
)
def test_values(value: float, text: str) -> None:
    assert number(value) == text


def test_escape_leaves_plain_values_alone() -> None:
    assert escape("posttrain.metrics") == "posttrain.metrics"
