"""The JSONL metric file: the writer's lines, plain points, verl's lines (trainer names mapped
as the agent maps them); nothing dropped; an unfinished last line waits; line numbers and the
first line are the points' identity, whoever reads the file."""

from __future__ import annotations

import io
import math

from posttrain.events.messages.metrics import MetricPoint
from posttrain.events.metricfile import (
    create_metrics_file_writer,
    file_source,
    read_lines,
    source_of_file,
)


def _lines(text: bytes) -> list[bytes]:
    return list(io.BytesIO(text))


def test_the_file_writers_lines_are_read_with_their_line_numbers() -> None:
    text = (
        b'{"job_id":"job-1","step":1,"timestamp":10.5,"loss":0.5,"custom":{"k":1}}\n'
        b"\n"
        b'{"job_id":"job-1","step":2,"timestamp":11.5,"loss":"NaN","epoch":0.1}\n'
    )
    lines = list(read_lines(_lines(text), 0.0, "job-1"))
    assert [line.number for line in lines] == [0, 2]
    first, second = (line.point for line in lines)
    assert first == MetricPoint(step=1, timestamp=10.5, loss=0.5, custom={"k": 1})
    assert second is not None and math.isnan(second.loss or 0.0) and second.epoch == 0.1


def test_plain_points_and_bare_nan_are_read_and_unknown_names_kept_under_custom() -> None:
    text = b'{"step": 3, "timestamp": 1.0, "grad_norm": NaN, "my_metric": 7, "loss": "high"}\n'
    (line,) = read_lines(_lines(text), 0.0, "job-1")
    assert line.point is not None
    assert math.isnan(line.point.grad_norm or 0.0)
    assert line.point.custom == {"my_metric": 7, "loss": "high"}


def test_verl_lines_are_read_from_their_data_with_verls_names_mapped() -> None:
    text = b'{"step": 4, "data": {"actor/pg_loss": 0.2, "loss": 0.3, "timing_s/gen": 1.5}}\n'
    (line,) = read_lines(_lines(text), 99.0, "job-1")
    assert line.point == MetricPoint(
        step=4, timestamp=99.0, loss=0.3, policy_loss=0.2, custom={"timing_s/gen": 1.5}
    )


def test_trainer_names_in_the_project_format_are_mapped() -> None:
    text = b'{"step": 1, "timestamp": 2.0, "grad_norm_actor": 0.5, "reward": 1.5, "kl": 0.1}\n'
    (line,) = read_lines(_lines(text), 0.0, "job-1")
    assert line.point == MetricPoint(
        step=1, timestamp=2.0, grad_norm=0.5, reward_mean=1.5, kl_divergence=0.1
    )


def test_bad_lines_are_reported_and_do_not_stop_the_others() -> None:
    text = (
        b"not json\n"
        b'{"job_id":"other","step":1,"timestamp":1}\n'
        b'{"timestamp":1}\n'
        b'{"step":5,"timestamp":1}\n'
    )
    lines = list(read_lines(_lines(text), 0.0, "job-1"))
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
    lines = list(read_lines(_lines(text), 0.0, "job-1"))
    assert [line.number for line in lines] == [0]
    # ...but a complete last line without its newline is read.
    lines = list(read_lines(_lines(b'{"step":1,"timestamp":1}'), 0.0, "job-1"))
    assert [line.number for line in lines] == [0]


def test_the_source_is_named_by_the_first_line_wherever_the_file_is(tmp_path) -> None:
    with create_metrics_file_writer("job-1", tmp_path / "a") as write:
        write(step=0, loss=1.0)
        write(step=1, loss=0.5)
    original = tmp_path / "a" / "job-1_metrics.jsonl"
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(b"\n" + original.read_bytes())  # a blank line first changes nothing
    with original.open("rb") as a, copy.open("rb") as b:
        assert source_of_file(a) == source_of_file(b) is not None
        first_line = original.read_bytes().split(b"\n")[0]
        assert source_of_file(a) == file_source(first_line)
    assert file_source(b'{"step": 0}\n') != file_source(b'{"step": 1}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"\n\n")
    with empty.open("rb") as fh:
        assert source_of_file(fh) is None
