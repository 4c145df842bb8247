"""Item 2 of issue 13: scale-out. Two instances each of the orchestrator, the metrics ingest, the
diagnostics stream and the gateway, and three agents, on the shared stack (a namespace and a
database of this run's own). Mid-pipeline one instance of each service is killed for good (its
partitions move to the other) and one agent is killed and started again; the same invariants
hold as in the resilience test (``posttrain.testing.chaos``).

POSTTRAIN_CHAOS_SEED=N replays a run: the seed is printed with the kill counts.
"""

from __future__ import annotations

import pytest

from posttrain.testing.chaos import scale_out, seed_from_env

pytestmark = pytest.mark.integration


@pytest.mark.timeout(1200)
async def test_one_instance_of_each_service_killed_for_good_the_others_carry_the_pipeline(
    kafka_settings, database_url, tmp_path, capsys
):
    seed = seed_from_env()

    outcome, plan = await scale_out(kafka_settings, database_url, tmp_path, seed)

    with capsys.disabled():
        print(f"\n{outcome.summary()}")
    assert outcome.violations == [], outcome.summary()
    # Every retirement happened while pipelines ran: the survivors carried them.
    assert outcome.performed == plan, outcome.summary()
    assert outcome.pipeline_ids and all(
        outcome.statuses.get(p) == "succeeded" for p in outcome.pipeline_ids
    ), outcome.summary()
