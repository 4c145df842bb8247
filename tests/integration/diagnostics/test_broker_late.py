"""The diagnostics stream started while the broker is away (restarting) waits for it and
becomes ready once it is back, instead of exiting with "Unable to bootstrap".

Found by the resilience suite (tests/chaos): the stream, killed and started again just before
a broker restart, ended during its topic preparation.
"""

from __future__ import annotations

import asyncio

import pytest

from posttrain.events.kafka import KafkaSettings, await_coordinators, ensure_topics
from posttrain.testing import services
from posttrain.testing.platform import PrivateStack
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def broker():
    """A private broker whose address is known before it is started (by the test)."""
    stack = PrivateStack()
    try:
        yield stack
    finally:
        stack.destroy()


async def test_a_stream_started_before_its_broker_waits_and_becomes_ready(broker, tmp_path):
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap, namespace="late")
    stream = services.diagnostics(settings, tmp_path / "stream.log").start()
    try:
        # It has tried and failed to reach the broker, and is still running.
        await wait_for(
            lambda: not stream.running or "does not answer yet" in stream.tail(20_000),
            timeout=120,
            what="the stream to meet the absent broker",
        )
        assert stream.running, stream.tail()

        await asyncio.to_thread(broker.up, "kafka")
        await ensure_topics(settings)
        await await_coordinators(settings)

        health = await stream.wait_ready(timeout=180)
        assert health["ready"] is True
    finally:
        stream.stop()
