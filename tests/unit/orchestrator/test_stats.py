"""The orchestrator's /healthz and /metrics, from what its loop counted (no broker)."""

from __future__ import annotations

from posttrain.orchestrator.shell.stats import (
    STUCK_AFTER_S,
    OrchestratorStats,
    health,
    pipelines_by_status,
    render_prometheus,
)
from tests.prometheus import samples
from tests.unit.orchestrator.sim import World


def cmd(name, deps=()):
    return {"name": name, "task": "command", "params": {"argv": [name]}, "depends_on": list(deps)}


def test_metrics_count_what_committed_transactions_carried_and_pipelines_by_status() -> None:
    done, running = World(pipeline_id="p1"), World(pipeline_id="p2")
    stats = OrchestratorStats(running=True, last_poll_at=100.0, assigned=True)
    stats.committed([done.submit([cmd("a")]), done.start("a")], records=2)
    stats.committed([done.succeed("a")], records=2, dead=1)
    stats.committed([running.submit([cmd("a"), cmd("b", ["a"])])], records=1)
    stats.transactions_aborted += 1
    stats.replayed(events=500, seconds=0.25)
    stats.replayed(events=100, seconds=0.5)
    appended = len(done.log) + len(running.log)

    states = {0: {"p1": done.state}, 3: {"p2": running.state}}
    by_status = pipelines_by_status(states.values())
    got = samples(render_prometheus(stats, [0, 3], by_status, now=102.5))

    p = "posttrain_orchestrator"
    assert got[f"{p}_up"] == 1
    assert got[f"{p}_owned_partitions"] == 2
    assert got[f'{p}_pipelines{{status="succeeded"}}'] == 1
    assert got[f'{p}_pipelines{{status="running"}}'] == 1
    assert got[f'{p}_pipelines{{status="failed"}}'] == 0
    assert got[f"{p}_records_total"] == 5
    assert got[f"{p}_dead_letters_total"] == 1
    assert got[f"{p}_events_appended_total"] == appended > 0
    assert got[f'{p}_agent_commands_total{{type="RunStage"}}'] == 2
    assert got[f'{p}_transactions_total{{outcome="committed"}}'] == 3
    assert got[f'{p}_transactions_total{{outcome="aborted"}}'] == 1
    assert got[f"{p}_replays_total"] == 2
    assert got[f"{p}_events_replayed_total"] == 600
    assert got[f"{p}_replay_seconds_total"] == 0.75
    assert got[f"{p}_last_replay_seconds"] == 0.5
    assert got[f"{p}_seconds_since_poll"] == 2.5


def test_healthy_while_the_loop_runs_and_polls() -> None:
    stats = OrchestratorStats(running=True, last_poll_at=100.0, assigned=True)
    ok, doc = health(stats, [1, 2], pipelines=7, now=101.0)
    assert ok
    assert doc == {
        "status": "ok",
        "alive": True,
        "ready": True,
        "partitions": [1, 2],
        "replaying": False,
        "seconds_since_poll": 1.0,
        "pipelines": 7,
    }


def test_starting_until_the_group_has_assigned_partitions_and_their_replay_is_done() -> None:
    stats = OrchestratorStats(running=True, last_poll_at=100.0)
    ok, doc = health(stats, [], pipelines=0, now=101.0)
    assert not ok and doc["status"] == "starting" and doc["ready"] is False
    stats.replaying = True
    ok, doc = health(stats, [0], pipelines=0, now=101.0)
    assert not ok and doc["status"] == "starting"
    stats.replaying, stats.assigned = False, True
    assert health(stats, [0], pipelines=0, now=101.0)[0]


def test_a_loop_that_stopped_polling_is_failing_unless_it_is_replaying() -> None:
    stats = OrchestratorStats(running=True, last_poll_at=100.0, assigned=True)
    later = 100.0 + STUCK_AFTER_S + 1
    ok, doc = health(stats, [0], pipelines=0, now=later)
    assert not ok and doc["status"] == "failing"
    stats.replaying = True  # a long replay holds the loop by design: not ready, not failing
    ok, doc = health(stats, [0], pipelines=0, now=later)
    assert doc["status"] == "starting"


def test_a_loop_that_ended_is_failing() -> None:
    stats = OrchestratorStats(running=False, last_poll_at=100.0)
    ok, doc = health(stats, [], pipelines=0, now=100.0)
    assert not ok and doc["alive"] is False
