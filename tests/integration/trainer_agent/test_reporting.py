"""The training callback on the real broker: points arrive with canonical names, and when Kafka
cannot take them they wait on disk and arrive later. Nothing is dropped."""

from __future__ import annotations

import math
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from posttrain.events.kafka import KafkaSettings, ensure_topics
from posttrain.events.messages import MetricsReported
from posttrain.events.topics import Topic
from posttrain.testing.platform import PrivateStack
from posttrain.trainer_agent.metrics_file import create_metrics_file_writer
from posttrain.trainer_agent.reporting import ReporterOptions, create_training_callback
from posttrain.trainer_agent.tailer import MetricsFileTailer, follow
from tests.integration.trainer_agent.topics import TopicReader, points_by_key
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _closed_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket is closed


async def test_points_arrive_on_the_topic_with_canonical_names(kafka_settings, tmp_path):
    report = create_training_callback(
        "job-canon",
        pipeline_id="p1",
        stage="rl",
        attempt=2,
        settings=kafka_settings,
        spill_dir=tmp_path,
    )
    for step in range(50):
        report(
            step=step,
            epoch=step / 50,
            policy_loss=float("nan") if step == 7 else 1.0 / (step + 1),
            reward_mean=0.1 * step,
            grad_norm_actor=2.0,
            gpu_memory_allocated_gib=1.5,
            my_metric=step,
        )
    assert report.flush(20)
    report.close()

    async with TopicReader(kafka_settings, Topic.METRICS) as reader:
        points = await reader.wait(
            lambda ms: len(points_by_key(ms, "job-canon")) == 50 and points_by_key(ms, "job-canon")
        )
        messages = reader.messages(MetricsReported)
    by_step = {p.step: p for p in points.values()}
    assert sorted(by_step) == list(range(50))
    assert by_step[3].grad_norm == 2.0 and by_step[3].gpu_memory_allocated_gb == 1.5
    assert by_step[3].policy_loss == 0.25 and by_step[3].custom == {"my_metric": 3}
    assert math.isnan(by_step[7].policy_loss)
    assert {(m.pipeline_id, m.stage, m.attempt) for m in messages} == {("p1", "rl", 2)}
    assert {m.source for m in messages} == {report.source}
    assert sorted(seq for _, seq in points) == list(range(50))


async def test_unreachable_broker_spills_and_a_later_reporter_delivers(kafka_settings, tmp_path):
    away = replace(kafka_settings, bootstrap_servers=_closed_port())
    first = create_training_callback("job-away", settings=away, spill_dir=tmp_path)
    for step in range(40):
        first(step=step, loss=1.0 / (step + 1))
    assert not first.flush(1.0)  # nothing can be on the broker
    assert first.wait_durable(10)
    left = first.close(timeout=5)
    assert left == 40
    assert any(p.name.endswith(".spill.jsonl") for p in tmp_path.iterdir())

    # The next reporter of the same job (the process restarted, the broker is back) sends them.
    second = create_training_callback("job-away", settings=kafka_settings, spill_dir=tmp_path)
    async with TopicReader(kafka_settings, Topic.METRICS) as reader:
        points = await reader.wait(
            lambda ms: len(points_by_key(ms, "job-away")) == 40 and points_by_key(ms, "job-away")
        )
    second.close()
    assert {source for source, _ in points} == {first.source}
    assert sorted(p.step for p in points.values()) == list(range(40))
    assert not any(p.name.endswith(".spill.jsonl") for p in tmp_path.iterdir())


async def test_a_full_queue_spills_instead_of_blocking_and_everything_arrives(
    kafka_settings, tmp_path
):
    options = ReporterOptions(queue_size=8, linger_s=0.05)
    report = create_training_callback(
        "job-full", settings=kafka_settings, spill_dir=tmp_path, options=options
    )
    for step in range(2000):
        report(step=step, loss=float(step))
    assert report.flush(30)
    report.close()
    assert report.stats()["spilled"] > 0  # the tiny queue overflowed to disk
    async with TopicReader(kafka_settings, Topic.METRICS) as reader:
        points = await reader.wait(
            lambda ms: len(points_by_key(ms, "job-full")) == 2000 and points_by_key(ms, "job-full")
        )
    assert sorted(p.step for p in points.values()) == list(range(2000))


async def test_broker_stopped_for_part_of_a_run_every_point_arrives_afterwards(tmp_path: Path):
    broker = PrivateStack()
    try:
        broker.up("kafka")
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap, client_id="ta-outage")
        await ensure_topics(settings, None)
        options = ReporterOptions(retry_min_s=0.2, retry_max_s=1.0, send_timeout_s=1.0)
        report = create_training_callback(
            "job-outage", settings=settings, spill_dir=tmp_path / "spill", options=options
        )
        for step in range(100):
            report(step=step, loss=1.0)
        assert report.flush(20)
        broker.down("kafka")
        for step in range(100, 200):  # the broker is down: these go to disk
            report(step=step, loss=2.0)
        assert not report.flush(1)
        # The outage outlasts the send timeout: the points are on disk before the broker is back.
        await wait_for(lambda: report.stats()["spilled"] >= 100, timeout=30, what="spilled")
        broker.up("kafka")
        for step in range(200, 300):
            report(step=step, loss=3.0)
        assert report.flush(60)
        report.close()
        async with TopicReader(settings, Topic.METRICS) as reader:
            points = await reader.wait(
                lambda ms: (
                    len(points_by_key(ms, "job-outage")) == 300 and points_by_key(ms, "job-outage")
                ),
                timeout=60,
            )
        assert sorted(p.step for p in points.values()) == list(range(300))
    finally:
        broker.destroy()


async def test_tailed_file_reaches_the_topic_once_even_when_the_tailer_restarts(
    kafka_settings, tmp_path
):
    writer = create_metrics_file_writer("job-file", tmp_path)
    for step in range(30):
        writer(step=step, loss=1.0 / (step + 1), grad_norm_actor=0.5)
    verl_lines = tmp_path / "verl.jsonl"
    verl_lines.write_text(
        "".join(f'{{"step": {s}, "data": {{"actor/pg_loss": {s / 10}}}}}\n' for s in range(10))
    )

    def tail(path: Path, job: str) -> int:
        report = create_training_callback(job, settings=kafka_settings, spill_dir=tmp_path / "s")
        stop = threading.Event()
        stop.set()  # read what is there, then return
        sent = follow(MetricsFileTailer(path), report, stop, poll_s=0.05)
        assert report.flush(20)
        report.close()
        return sent

    assert tail(writer.path, "job-file") == 30
    for step in range(30, 40):
        writer(step=step, loss=0.01)
    writer.close()
    assert tail(writer.path, "job-file") == 10  # resumed from the saved offset
    assert tail(verl_lines, "job-verl") == 10

    async with TopicReader(kafka_settings, Topic.METRICS) as reader:
        await reader.wait(
            lambda ms: (
                len(points_by_key(ms, "job-file")) == 40
                and len(points_by_key(ms, "job-verl")) == 10
            )
        )
        messages = reader.messages(MetricsReported)
    file_points = points_by_key(messages, "job-file")
    assert sum(len(m.points) for m in messages if m.job_id == "job-file") == 40  # no re-sends
    assert sorted(p.step for p in file_points.values()) == list(range(40))
    assert all(p.grad_norm == 0.5 for p in file_points.values() if p.step < 30)
    verl = sorted(points_by_key(messages, "job-verl").values(), key=lambda p: p.step)
    assert [p.policy_loss for p in verl] == [s / 10 for s in range(10)]
