"""An idempotent producer for a thread with no event loop: the training process's metrics sender.

The services produce with aiokafka (``producer.EventProducer``) inside their asyncio loops. A
reporter inside a user's training process is different: every microsecond its thread holds the
interpreter lock is a microsecond the training loop may wait. aiokafka does a Kafka request's
work in Python (the loop's iterations, the request's encoding, the response's parsing: about
1.5 ms of CPU per request, measured by ``bench.callback_overhead``); librdkafka, through
``confluent_kafka``, does it in C threads of its own, so the calling thread only hands over the
encoded records and waits, without the lock, for their acknowledgements.

Same guarantees as ``EventProducer``: idempotent (``acks=all``, no duplicate on a retry), and a
key lands on the partition Kafka's Java client would pick (murmur2), so a job's points keep one
partition whichever client wrote them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException, Producer

from posttrain.events.kafka.producer import MAX_BATCH_BYTES
from posttrain.events.kafka.settings import KafkaSettings
from posttrain.events.topics import Topic

log = logging.getLogger(__name__)

Record = tuple[bytes, bytes, list[tuple[str, bytes]]]  # key, value, headers (codec.encode)

# How often a waiting call looks at librdkafka's reports (errors such as "all brokers down").
_POLL_S = 0.05


class ProduceFailed(RuntimeError):
    """Some records of a call are not acknowledged: the broker refused them, could not be
    reached, or did not answer in time. They may still land later (a retry in flight), so a
    caller that sends them again relies on the consumer's deduplication."""


class BlockingProducer:
    """``send(topic, records, timeout)`` returns once the broker has every record, or raises.

    After a failure the instance may hold records it could not deliver: ``close`` drops them;
    make a new one to go on (as the reporter does, after keeping the records on disk).
    """

    def __init__(self, settings: KafkaSettings, *, timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._unreachable: str | None = None
        self._producer = Producer(
            {
                **settings.librdkafka_config(),
                "enable.idempotence": True,
                "acks": "all",
                # Kafka's Java default partitioner for keyed records (``partition_for``).
                "partitioner": "murmur2_random",
                # The caller hands over whole batches: nothing to wait for.
                "linger.ms": 0,
                "message.max.bytes": 4 * MAX_BATCH_BYTES,
                "message.timeout.ms": int(timeout_s * 1000),
                "error_cb": self._on_error,
                "logger": log,
            }
        )

    def probe(self, topic: Topic | str) -> None:
        """Raise ``ProduceFailed`` unless a broker answers with the topic's metadata in time."""
        name = self.settings.topic(topic)
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                metadata = self._producer.list_topics(name, timeout=_POLL_S * 4)
            except KafkaException as exc:
                problem = str(exc)
            else:
                found = metadata.topics.get(name)
                if found is not None and found.error is None and found.partitions:
                    return
                problem = f"topic {name} has no partitions: {found.error if found else 'absent'}"
            self._producer.poll(0)  # serves error_cb: a refused connection says so at once
            if self._unreachable is not None:
                raise ProduceFailed(f"Kafka unreachable: {self._unreachable}")
            if time.monotonic() >= deadline:
                raise ProduceFailed(f"no answer from Kafka in {self.timeout_s:g} s: {problem}")

    def send(self, topic: Topic | str, records: Sequence[Record]) -> int:
        """Produce ``records`` and wait until the broker acknowledges every one; returns the
        count. Raises ``ProduceFailed`` on the first error, when every broker is unreachable,
        or after the timeout."""
        name = self.settings.topic(topic)
        failures: list[str] = []

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                failures.append(err.str())

        produce = self._producer.produce
        for key, value, headers in records:
            while True:
                try:
                    produce(
                        name,
                        value=value,
                        key=key,
                        headers=cast("list[tuple[str, str | bytes | None]]", headers),
                        on_delivery=delivered,
                    )
                    break
                except BufferError:  # librdkafka's own queue is full: let it drain a little
                    self._producer.poll(_POLL_S)
                except KafkaException as exc:
                    raise ProduceFailed(str(exc)) from exc
        deadline = time.monotonic() + self.timeout_s
        while True:
            remaining = self._producer.flush(_POLL_S)  # serves delivery reports and error_cb
            if failures:
                raise ProduceFailed(f"{len(failures)} record(s) refused: {failures[0]}")
            if remaining == 0:
                return len(records)
            if self._unreachable is not None:
                raise ProduceFailed(f"Kafka unreachable: {self._unreachable}")
            if time.monotonic() >= deadline:
                raise ProduceFailed(
                    f"{remaining} record(s) unacknowledged after {self.timeout_s:g} s"
                )

    def close(self) -> None:
        """Drop whatever is still queued or in flight and release the connections."""
        self._producer.purge()
        self._producer.flush(0)

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN or err.fatal():
            self._unreachable = err.str()
        else:
            log.debug("librdkafka: %s", err.str())
