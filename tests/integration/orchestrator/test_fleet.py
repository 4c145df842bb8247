"""A small simulated fleet on the real broker (``posttrain.testing.fleet``): 50 scripted agents
in two processes, some going down and coming back, 120 pipelines of eight stages, against one
orchestrator and then two. Every pipeline ends as scripted, each (stage, attempt) is dispatched
once, and no agent refuses a RunStage for lack of a slot."""

from __future__ import annotations

import pytest

from posttrain.testing.fleet import FleetScript, run_fleet

pytestmark = pytest.mark.integration

SMALL = FleetScript(
    agents=50,
    processes=2,
    slots=3,
    heartbeat_s=0.5,
    pipelines=120,
    submit_over_s=6.0,
    stage_s=(0.05, 0.2),
    retry_every=10,
    fail_every=50,
    outages=2,
    outage_s=4.0,
    deadline_s=45.0,
)


@pytest.mark.parametrize("orchestrators", [1, 2])
async def test_a_small_fleet_runs_every_pipeline_as_scripted(
    kafka_settings, tmp_path, orchestrators
):
    report = await run_fleet(kafka_settings, SMALL, tmp_path, orchestrators=orchestrators)
    assert report.problems() == []
    assert report.submitted == SMALL.pipelines
    assert len(report.failed) == SMALL.pipelines // SMALL.fail_every  # as scripted
    # the script's failures and outages happened: retried stages, agents down and back
    assert any(attempt == 2 for (_, stage, attempt) in report.dispatched if stage == "ppo")
    assert {r["kind"] for r in report.records} >= {"run", "down", "back"}
    assert report.dispatch_ms  # latencies were measured for the benchmark's figure
