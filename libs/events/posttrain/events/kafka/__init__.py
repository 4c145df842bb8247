"""Kafka helpers over aiokafka: settings, admin, batched idempotent producer, consumers with a
dead-letter topic. (``blocking``, the producer
of a thread without an event loop, over librdkafka, is imported from its module: the services
never load librdkafka.)"""

from posttrain.events.kafka.admin import (
    NewTopicSpec,
    TopicProblem,
    await_coordinators,
    await_leaders,
    check_topics,
    ensure_named_topics,
    ensure_topics,
)
from posttrain.events.kafka.consumer import EventConsumer, Received
from posttrain.events.kafka.dlq import DeadLetters
from posttrain.events.kafka.producer import EventProducer
from posttrain.events.kafka.settings import KafkaSettings

__all__ = [
    "DeadLetters",
    "EventConsumer",
    "EventProducer",
    "KafkaSettings",
    "NewTopicSpec",
    "Received",
    "TopicProblem",
    "await_coordinators",
    "await_leaders",
    "check_topics",
    "ensure_named_topics",
    "ensure_topics",
]
