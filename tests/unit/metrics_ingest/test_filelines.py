"""The JSONL metric file: the writer's lines, plain points, verl's lines; nothing dropped; an
unfinished last line waits; line numbers are the points' identity."""

from __future__ import annotations

import io
import math

from posttrain.events.messages.metrics import MetricPoint
from posttrain.metrics_ingest.core.filelines import file_source, read_lines


def _lines(text: bytes) -> list[bytes]:
    return list(io.BytesIO(text))


def test_the_file_writers_lines_are_read_with_their_line_numbers() -> None:
    text = (
        b'{"job_id":"job-1","step":1,"timestamp":10.5,"loss":0.5,"custom":{"k":1}}\n'
        b"\n"
        b'{"job_id":"job-1","step":2,"timestamp":11.5,"loss":"NaN","epoch":0.1}\n'
    )
    lines = list(read_lines(_lines(text), "job-1", 0.0))
    assert [line.number for line in lines] == [0, 2]
    first, second = (line.point for line in lines)
    assert first == MetricPoint(step=1, timestamp=10.5, loss=0.5, custom={"k": 1})
    assert second is not None and math.isnan(second.loss or 0.0) and second.epoch == 0.1


def test_plain_points_and_bare_nan_are_read_and_unknown_names_kept_under_custom() -> None:
    text = b'{"step": 3, "timestamp": 1.0, "grad_norm": NaN, "my_metric": 7, "loss": "high"}\n'
    (line,) = read_lines(_lines(text), "job-1", 0.0)
    assert line.point is not None
    assert math.isnan(line.point.grad_norm or 0.0)
    assert line.point.custom == {"my_metric": 7, "loss": "high"}


def test_verl_lines_are_read_from_their_data() -> None:
    text = b'{"step": 4, "data": {"actor/pg_loss": 0.2, "loss": 0.3}}\n'
    (line,) = read_lines(_lines(text), "job-1", 99.0)
    assert line.point == MetricPoint(
        step=4, timestamp=99.0, loss=0.3, custom={"actor/pg_loss": 0.2}
    )


def test_bad_lines_are_reported_and_do_not_stop_the_others() -> None:
    text = (
        b"not json\n"
        b'{"job_id":"other","step":1,"timestamp":1}\n'
        b'{"timestamp":1}\n'
        b'{"step":5,"timestamp":1}\n'
    )
    lines = list(read_lines(_lines(text), "job-1", 0.0))
    assert [(line.number, line.point is None) for line in lines] == [
        (0, True),
        (1, True),
        (2, True),
        (3, False),
    ]
    assert "not JSON" in (lines[0].error or "")
    assert "other" in (lines[1].error or "")
    assert "step" in (lines[2].error or "")


def test_an_unfinished_last_line_is_left_for_the_next_sync() -> None:
    text = b'{"step":1,"timestamp":1}\n{"step":2,"time'
    lines = list(read_lines(_lines(text), "job-1", 0.0))
    assert [line.number for line in lines] == [0]
    # ...but a complete last line without its newline is read.
    lines = list(read_lines(_lines(b'{"step":1,"timestamp":1}'), "job-1", 0.0))
    assert [line.number for line in lines] == [0]


def test_the_source_names_the_file() -> None:
    assert file_source("job-1_metrics.jsonl") == "file:job-1_metrics.jsonl"
