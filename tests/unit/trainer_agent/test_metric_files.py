"""Metric files on local disk: the writer's lines, the tailer (partial lines, truncation,
resuming), and the spill file. Local files only, no network."""

from __future__ import annotations

import json
import math
import os

from posttrain.events.messages import MetricPoint
from posttrain.trainer_agent.metrics_file import create_metrics_file_writer
from posttrain.trainer_agent.spill import SpilledPoint, SpillFile, adopt_orphans, read_points
from posttrain.trainer_agent.tailer import MetricsFileTailer


def test_writer_writes_the_documented_line_format(tmp_path):
    with create_metrics_file_writer("job-1", tmp_path) as writer:
        writer(step=3, epoch=1.0, grad_norm_actor=0.5, loss=float("nan"), note="x")
    assert writer.path == tmp_path / "job-1_metrics.jsonl"
    line = json.loads(writer.path.read_text())
    assert line["job_id"] == "job-1" and line["step"] == 3 and line["epoch"] == 1.0
    assert line["grad_norm"] == 0.5 and line["loss"] == "NaN"
    assert line["custom"] == {"note": "x"}
    assert isinstance(line["timestamp"], float)


def test_tailer_waits_for_the_newline_of_a_partial_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"step": 0, "loss": 1.0}\n{"step": 1, "lo')
    tailer = MetricsFileTailer(path)
    assert [p.point.step for p in tailer.poll()] == [0]
    assert tailer.poll() == []
    with open(path, "ab") as fh:
        fh.write(b'ss": 0.5}\n')
    [p] = tailer.poll()
    assert (p.seq, p.point.step, p.point.loss) == (1, 1, 0.5)


def test_tailer_resumes_from_its_saved_offset(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(5)))
    first = MetricsFileTailer(path)
    assert len(first.poll()) == 5
    first.save()
    with open(path, "a") as fh:
        fh.write(json.dumps({"step": 5, "loss": 1.0}) + "\n")
    again = MetricsFileTailer(path)
    points = again.poll()
    assert [(p.seq, p.point.step) for p in points] == [(5, 5)]
    assert points[0].source == first.source  # same file, same identity


def test_tailer_starts_a_new_generation_when_the_file_is_truncated_or_rewritten(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(3)))
    tailer = MetricsFileTailer(path)
    old = tailer.poll()
    path.write_text(json.dumps({"step": 100}) + "\n")  # truncated in place: shorter
    new = tailer.poll()
    assert [(p.seq, p.point.step) for p in new] == [(0, 100)]
    assert new[0].source != old[0].source
    # Rewritten in place and grown past the offset between two polls: the head differs.
    with open(path, "r+") as fh:
        fh.write("".join(json.dumps({"step": 200 + s}) + "\n" for s in range(5)))
    again = tailer.poll()
    assert [p.point.step for p in again] == [200, 201, 202, 203, 204]
    assert again[0].source not in {old[0].source, new[0].source}


def test_tailer_skips_garbage_and_reads_verl_lines_with_bare_nan(tmp_path):
    path = tmp_path / "verl.jsonl"
    path.write_text(
        '{"step": 1, "data": {"actor/pg_loss": NaN, "critic/score/mean": 0.5}}\n'
        "not json\n"
        '{"step": 2, "data": {"actor/pg_loss": 0.1}}\n'
    )
    tailer = MetricsFileTailer(path)
    points = tailer.poll()
    assert [(p.seq, p.point.step) for p in points] == [(0, 1), (2, 2)]
    assert math.isnan(points[0].point.policy_loss) and points[0].point.reward_mean == 0.5
    assert tailer.skipped_lines == 1


def test_spill_file_round_trip_take_acknowledge_and_orphans(tmp_path):
    spill = SpillFile(tmp_path, "job", "src-a")
    point = MetricPoint(step=1, timestamp=2.0, loss=math.nan, custom={"k": [1, 2]})
    spill.append([SpilledPoint("job", "src-a", 5, point, "p", "s", 1)])
    # A live reporter's files are not adopted by another.
    assert [o.files for o in adopt_orphans(tmp_path, "job", exclude="other")] == []
    [taken] = spill.take()
    assert (taken.seq, taken.pipeline_id, taken.stage, taken.attempt) == (5, "p", "s", 1)
    assert math.isnan(taken.point.loss) and taken.point.custom == {"k": [1, 2]}
    spill.append([SpilledPoint("job", "src-a", 6, point)])  # goes to a fresh file meanwhile
    spill.close()  # the process ends before the broker acknowledged
    [orphans] = list(adopt_orphans(tmp_path, "job"))
    seqs = sorted(p.seq for f in orphans.files for p in read_points(f))
    assert seqs == [5, 6]
    orphans.release()
    assert sorted(os.listdir(tmp_path)) == []


def test_a_torn_last_spill_line_is_skipped(tmp_path):
    path = tmp_path / "x.spill.jsonl"
    line = SpilledPoint("job", "s", 0, MetricPoint(step=0, timestamp=0.0)).to_line()
    path.write_bytes(line + line[:10])
    assert [p.seq for p in read_points(path)] == [0]


def test_the_tailers_source_is_the_metric_files_whatever_position_it_resumes_from(tmp_path):
    from posttrain.events.metricfile import source_of_file

    path = tmp_path / "m.jsonl"
    path.write_text("\n" + "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(3)))
    with path.open("rb") as fh:
        expected = source_of_file(fh)  # what ``posttrain metrics sync`` names the file
    tailer = MetricsFileTailer(path)
    assert {p.source for p in tailer.poll()} == {expected}
    # A position saved by a tailer from before sources were named by the first line.
    tailer.save()
    state = json.loads(tailer.state_path.read_text())
    del state["source"]
    tailer.state_path.write_text(json.dumps(state))
    with open(path, "a") as fh:
        fh.write(json.dumps({"step": 3, "loss": 1.0}) + "\n")
    [p] = MetricsFileTailer(path).poll()
    assert (p.source, p.seq, p.point.step) == (expected, 4, 3)
