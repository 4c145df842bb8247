"""Command intake: the agent reads its own partition of ``posttrain.agent.commands``.

Commands are keyed by agent id, so an agent reads the one partition its id hashes to (no
consumer-group rebalancing: a restarted agent goes on at once from its committed offset). Offsets
are committed after the commands of a batch were handled; a command redelivered after a crash
is harmless, the journal answers it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka import TopicPartition

from posttrain.events.kafka import EventConsumer, EventProducer, KafkaSettings
from posttrain.events.kafka.producer import partition_for
from posttrain.events.messages import Message
from posttrain.events.topics import Topic

log = logging.getLogger("posttrain.trainer_agent")


async def assign_own_partition(
    consumer: EventConsumer, producer: EventProducer, settings: KafkaSettings, agent_id: str
) -> None:
    topic = settings.topic(Topic.AGENT_COMMANDS)
    partitions = sorted(await producer.client.partitions_for(topic))
    mine = partition_for(agent_id.encode(), len(partitions))
    consumer.client.assign([TopicPartition(topic, mine)])


async def read_commands(
    consumer: EventConsumer, handle: Callable[[Message], Awaitable[None]]
) -> None:
    """Hand every command to ``handle``, for ever."""
    while True:
        try:
            batch = await consumer.getmany(timeout_ms=200)
        except Exception as exc:
            # The broker is away: stages go on, commands wait for it (the offsets were
            # committed only for handled ones).
            log.warning("cannot read commands", extra={"error": str(exc)})
            await asyncio.sleep(1.0)
            continue
        for received in batch:
            message = received.envelope.data
            try:
                await handle(message)
            except Exception:
                # One command that cannot be handled must not stop the agent.
                log.exception("command failed", extra={"type": message.TYPE})
        if batch:
            try:
                await consumer.commit()
            except Exception as exc:  # redelivered later: the journal makes that harmless
                log.warning("offsets not committed", extra={"error": str(exc)})
