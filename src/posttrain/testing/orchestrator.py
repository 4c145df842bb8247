"""Running the orchestrator as a real process (for crash tests and benchmarks: a
``services.ServiceProcess``), and reading its event log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from posttrain.events import decode
from posttrain.events.kafka import KafkaSettings
from posttrain.events.topics import TOPICS, Topic
from posttrain.testing import services
from posttrain.testing.services import ServiceProcess


def start_orchestrator(
    settings: KafkaSettings, log: Path, *extra: str, database_url: str | None = None
) -> ServiceProcess:
    """Start ``python -m posttrain.orchestrator`` on ``settings``' broker and namespace, its
    output appended to ``log``, quick to notice lost agents and crashed instances; ``extra``
    arguments go last, so they win. No /healthz unless ``extra`` asks (``--http
    127.0.0.1:0``: the port is in the log), since several run at once. Without
    ``database_url`` no read model is projected (never into the default database by
    accident). Stop it with its ``stop()`` or ``kill()``."""
    return services.orchestrator(
        settings,
        log,
        database_url=database_url,
        extra=["--silence-intervals", "4", "--session-timeout-ms", "2000", "--http", "off", *extra],
    ).start()


async def read_log(settings: KafkaSettings) -> list[Any]:
    """Every committed event on the pipeline event log, in partition order."""
    consumer = AIOKafkaConsumer(
        **settings.client_options(),
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
