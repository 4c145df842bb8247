"""posttrain's message contracts: every command and event, the envelope, the codec and topics.

Downstream tools depend on this package alone. Kafka helpers live in ``posttrain.events.kafka``.
"""

from posttrain.events.codec import DecodeError, decode, encode
from posttrain.events.envelope import Envelope
from posttrain.events.messages import MESSAGE_TYPES, Message
from posttrain.events.topics import TOPICS, Topic, TopicSpec

__all__ = [
    "MESSAGE_TYPES",
    "TOPICS",
    "DecodeError",
    "Envelope",
    "Message",
    "Topic",
    "TopicSpec",
    "decode",
    "encode",
]
