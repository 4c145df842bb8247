"""A transactional consume-transform-produce worker, run as its own process by the tests.

For every TickClock on pipeline.commands it writes a TickClock caused by it on pipeline.events.
``--crash`` kills the process with SIGKILL after the outputs are sent and before the commit.
Without it, the worker stops once its committed offsets reach the input's end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from aiokafka import TopicPartition

from posttrain.events.kafka import KafkaSettings, Received, TransactionalProcessor
from posttrain.events.topics import TOPICS, Topic


def echo(received: Received):
    return [(Topic.PIPELINE_EVENTS, received.envelope.caused(received.envelope.data))]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--crash", action="store_true")
    args = parser.parse_args()
    settings = KafkaSettings(bootstrap_servers=args.bootstrap, namespace=args.namespace)

    def crash() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    processor = TransactionalProcessor(
        settings,
        input_topics=[Topic.PIPELINE_COMMANDS],
        group_id="txn-test",
        transactional_id="txn-test-worker",
        handler=echo,
        name="txn-test",
        before_commit=crash if args.crash else None,
    )
    await processor.start()
    try:
        name = settings.topic(Topic.PIPELINE_COMMANDS)
        parts = [TopicPartition(name, p) for p in range(TOPICS[Topic.PIPELINE_COMMANDS].partitions)]
        ends = await processor.consumer.end_offsets(parts)
        while True:
            await processor.process_batch(timeout_ms=500)
            committed = [await processor.consumer.committed(tp) or 0 for tp in parts]
            if all(c >= ends[tp] for c, tp in zip(committed, parts, strict=True)):
                break
    finally:
        await processor.stop()
    print(f"processed {processor.processed}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
