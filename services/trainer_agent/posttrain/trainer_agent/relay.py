"""Relaying what a stage process reports (its events file) to ``posttrain.stage.reports``.

Each line gets an envelope id made of the command id and its line number, the same on a
re-publish, and the journal records how far the file is on Kafka (``EventsPublished``), so a
restarted agent goes on from there.
"""

from __future__ import annotations

from pathlib import Path

from posttrain.events import Envelope
from posttrain.events.kafka import EventProducer
from posttrain.events.topics import Topic
from posttrain.trainer_agent.core.events import EventsPublished
from posttrain.trainer_agent.core.reports import event_message
from posttrain.trainer_agent.core.state import Entry
from posttrain.trainer_agent.stage_files import EVENTS, LineFollower


class EventRelay:
    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self._followers: dict[str, LineFollower] = {}

    def forget(self, command_id: str) -> None:
        self._followers.pop(command_id, None)

    async def publish(self, entry: Entry, producer: EventProducer) -> EventsPublished | None:
        """Send the lines appended since the last call; the journal event that records it (None
        if there was nothing new)."""
        follower = self._followers.get(entry.command_id)
        if follower is None:
            follower = LineFollower(Path(entry.attempt_dir) / EVENTS, entry.events_offset)
            follower.lines_read = entry.events_published
            self._followers[entry.command_id] = follower
        if not follower.changed():
            return None
        first = follower.lines_read
        envelopes = []
        for index, event in enumerate(follower.read(), start=first):
            message = event_message(entry, event, self.agent_id)
            if message is not None:
                envelopes.append(
                    Envelope.create(
                        message,
                        key=entry.run["pipeline_id"],
                        id=f"{entry.command_id}:event:{index}",  # the same on a re-publish
                    )
                )
        try:
            if envelopes:
                await producer.send_many(Topic.STAGE_REPORTS, envelopes)
        except Exception:
            # Not on Kafka yet: read them again next time.
            self.forget(entry.command_id)
            raise
        return EventsPublished(entry.command_id, follower.lines_read, follower.offset)
