"""When an agent counts as silent: only time in which the broker answered counts.

Found by the resilience suite (tests/chaos): a broker restart of about 30 s on a loaded machine
silenced every heartbeat, the orchestrator marked the agents lost and retried each running
stage on another agent while its first attempt ran on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from posttrain.events.kafka import KafkaSettings
from posttrain.events.messages import AgentHeartbeat
from posttrain.orchestrator.shell.agents import BLIND_AFTER_S, AgentTable

T0 = 1_000_000.0


def beat(agent: str = "a", interval_s: float = 1.0) -> AgentHeartbeat:
    return AgentHeartbeat(
        agent_id=agent, host="h", gpus=0, free_gpus=0, interval_s=interval_s, sent_at=T0
    )


@pytest.fixture
async def agents() -> AsyncIterator[AgentTable]:
    # Never started: nothing here connects to a broker.
    table = AgentTable(KafkaSettings(bootstrap_servers="127.0.0.1:1"), silence_intervals=3)
    yield table
    await table.stop()


async def test_an_agent_the_broker_still_answers_for_goes_silent_after_its_intervals(agents):
    agents.heard(beat(), T0)
    for t in range(1, 6):  # the broker answers each second: no heartbeat came
        agents.answered(T0 + t)

    assert agents.silent(T0 + 2.5) == []
    assert agents.silent(T0 + 3.5) == ["a"]


async def test_while_the_broker_is_away_no_agent_goes_silent(agents):
    agents.heard(beat(), T0)
    agents.answered(T0)

    # 30 s without any answer: the orchestrator could hear nobody.
    assert agents.silent(T0 + 30) == []


async def test_the_time_without_answers_is_not_counted_once_the_broker_is_back(agents):
    agents.heard(beat("a"), T0)
    agents.heard(beat("b"), T0)
    agents.answered(T0)

    agents.answered(T0 + 30)  # the broker answers again after 30 s
    agents.heard(beat("b"), T0 + 30.5)  # b's next heartbeat; a's is still on its way

    assert agents.silent(T0 + 31) == []
    # a had 0 s of counted silence before the gap: it has its whole allowance again.
    agents.answered(T0 + 32)
    assert agents.silent(T0 + 32) == []
    agents.heard(beat("b"), T0 + 33)
    agents.answered(T0 + 34)
    assert agents.silent(T0 + 34) == ["a"]


async def test_short_gaps_between_answers_are_ordinary_long_polls(agents):
    agents.heard(beat(), T0)
    t = T0
    while t < T0 + 4:
        t += BLIND_AFTER_S * 0.9
        agents.answered(t)

    assert agents.silent(t) == ["a"]
