"""Item 1 of issue 13: the whole platform under failure. A real pipeline with real tiny training
runs while each service is killed with SIGKILL at seeded random moments (the orchestrator, each
agent, the ingest, the diagnostics stream, the gateway) and the Kafka broker and PostgreSQL are
each restarted once, through the local stack's own commands, on a broker and server of this
test's own (the shared stack is never stopped). Pipelines are submitted one after another until
the whole plan is carried out. Afterwards every invariant holds
(``posttrain.testing.chaos``, ``posttrain.testing.invariants``).

POSTTRAIN_CHAOS_SEED=N replays a run: the seed is printed with the kill counts.
"""

from __future__ import annotations

import pytest

from posttrain.testing.chaos import RESILIENCE_SERVICES, resilience, seed_from_env
from posttrain.testing.platform import private_stack

pytestmark = pytest.mark.integration


@pytest.fixture
def stack():
    with private_stack() as stack:
        yield stack


@pytest.mark.timeout(1200)
async def test_every_service_killed_and_the_stack_restarted_the_pipeline_still_holds(
    stack, tmp_path, capsys
):
    seed = seed_from_env()

    outcome, plan = await resilience(stack, tmp_path, seed)

    with capsys.disabled():
        print(f"\n{outcome.summary()}")
    assert outcome.violations == [], outcome.summary()
    # The whole plan was carried out while pipelines ran: every service killed, the stack
    # restarted, however fast this machine trains.
    assert outcome.performed == plan, outcome.summary()
    assert set(outcome.kill_counts()) == {*RESILIENCE_SERVICES, "kafka", "postgres"}
    assert outcome.pipeline_ids and all(
        outcome.statuses.get(p) == "succeeded" for p in outcome.pipeline_ids
    ), outcome.summary()
