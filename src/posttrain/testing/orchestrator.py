"""Running the orchestrator as a real process (for crash tests and benchmarks), and reading its
event log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from posttrain.events import decode
from posttrain.events.kafka import KafkaSettings
from posttrain.events.topics import TOPICS, Topic


def start_orchestrator(
    settings: KafkaSettings, log: Path, *extra: str, database_url: str | None = None
) -> subprocess.Popen[bytes]:
    """Start ``python -m posttrain.orchestrator`` on ``settings``' broker and namespace, its
    output appended to ``log``; ``extra`` arguments go last, so they win (``--http
    127.0.0.1:0`` for /healthz and /metrics: the port is in the log). Without ``database_url``
    no read model is projected (never into the default database by accident)."""
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "POSTTRAIN_TOPIC_NAMESPACE": settings.namespace,
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "posttrain.orchestrator",
                "--tick-interval",
                "0.2",
                "--silence-intervals",
                "4",
                "--session-timeout-ms",
                "2000",
                # Several run at once in tests and benchmarks: no fixed port to clash on.
                "--http",
                "off",
                # Their logs are short (helpers would never fold a share): no helper processes.
                "--replay-processes",
                "0",
                *(["--database-url", database_url] if database_url else ["--no-projection"]),
                *extra,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            kill(process)


async def read_log(settings: KafkaSettings) -> list[Any]:
    """Every committed event on the pipeline event log, in partition order."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    events: list[Any] = []
    try:
        topic = settings.topic(Topic.PIPELINE_EVENTS)
        tps = [TopicPartition(topic, p) for p in range(TOPICS[Topic.PIPELINE_EVENTS].partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while True:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                events.extend(decode(r.value, r.headers) for r in records)
            positions = {tp: await consumer.position(tp) for tp in ends}
            if all(positions[tp] >= end for tp, end in ends.items()):
                break
    finally:
        await consumer.stop()
    return events
