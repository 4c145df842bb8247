"""The orchestrator's decisions, in a deterministic world (no broker: the core is pure)."""

from __future__ import annotations

from posttrain.events.messages import (
    AdjustLearningRate,
    CancelPipeline,
    CancelStage,
    RequestAction,
    ResumePipeline,
    RetryStage,
    StageSpec,
)
from posttrain.orchestrator.core.decide import AgentView, CacheEntry, Context, decide
from posttrain.orchestrator.core.state import PipelineState
from tests.unit.orchestrator.sim import World


def cmd(name, deps=(), **extra):
    return {
        "name": name,
        "task": "command",
        "params": {"argv": ["run", name]},
        "depends_on": list(deps),
        **extra,
    }


def train(name, deps=(), **extra):
    return {
        "name": name,
        "task": "train_model",
        "params": {"config": {"algorithm": "sft", "model_path": "tiny-llama"}},
        "depends_on": list(deps),
        **extra,
    }


FAN = [cmd("a"), cmd("b", ["a"]), cmd("c", ["a"]), cmd("d", ["b", "c"])]


def test_fan_out_fan_in_runs_to_success_and_replays_to_the_same_state():
    w = World()
    w.submit(FAN)
    assert [r.stage for r in w.runs()] == ["a"]
    w.succeed("a")
    assert sorted(r.stage for r in w.runs()) == ["a", "b", "c"]
    w.succeed("b")
    assert "d" not in [r.stage for r in w.runs()]
    w.succeed("c")
    w.succeed("d")
    assert w.status() == "succeeded"
    assert w.replayed_view() == w.view()


def test_scheduling_is_by_readiness_not_by_layer():
    # a -> b -> d and a -> c: d must start when b is done even though c (same layer as b) runs.
    w = World()
    w.submit([cmd("a"), cmd("b", ["a"]), cmd("c", ["a"]), cmd("d", ["b"])])
    w.succeed("a")
    w.succeed("b")
    assert w.status("c") == "assigned"
    assert w.run_for("d").attempt == 1


def test_command_ids_are_deterministic_and_references_resolved_at_dispatch():
    w = World(pipeline_id="pipe")
    w.submit(
        [
            {
                "name": "sft",
                "task": "train_model",
                "params": {"job_uuid": "zzz1", "config": {"algorithm": "sft", "model_path": "m"}},
            },
            {
                "name": "rl",
                "task": "train_model",
                "depends_on": ["sft"],
                "params": {"config": {"algorithm": "grpo", "model_path": "${sft.checkpoint}"}},
            },
        ]
    )
    assert w.run_for("sft").command_id == "pipe:sft:1"
    assert w.run_for("sft").job_id == "zzz1"
    w.succeed("sft", {"checkpoint": "/ckpt/sft-final"})
    rl = w.run_for("rl")
    assert rl.params["config"]["model_path"] == "/ckpt/sft-final"
    assert (rl.command_id, rl.job_id) == ("pipe:rl:1", "pipe.rl")


def test_failure_retries_with_backoff_then_fails_the_pipeline():
    w = World()
    w.submit([cmd("a", retries={"max_attempts": 2, "backoff_s": 10})])
    w.fail("a")
    assert w.status("a") == "retry_wait"
    w.tick(5)
    assert len(w.runs()) == 1  # still backing off
    w.tick(6)
    second = w.run_for("a")
    assert second.attempt == 2 and second.command_id == "p1:a:2"
    w.fail("a")
    assert w.status() == "failed"
    assert [a["status"] for a in w.view()["stages"][0]["attempts"]] == ["failed", "failed"]
    assert w.replayed_view() == w.view()


def test_a_retry_resumes_from_the_last_checkpoint():
    w = World()
    w.submit([cmd("a", retries={"max_attempts": 2, "backoff_s": 0})])
    from posttrain.events.messages import CheckpointSaved

    run = w.run_for("a")
    w.start("a")
    w.send(
        CheckpointSaved(
            pipeline_id="p1",
            stage="a",
            attempt=1,
            command_id=run.command_id,
            agent_id=run.agent_id,
            job_id=run.job_id,
            step=40,
            path="/ck/40",
        )
    )
    w.fail("a")
    w.tick(0.1)
    assert w.run_for("a").resume_from == "/ck/40"


def test_resume_after_failure_runs_only_the_failed_stage_and_its_descendants():
    w = World()
    w.submit(FAN)
    w.succeed("a")
    w.succeed("b")
    w.fail("c")
    assert w.status() == "failed"
    before = len(w.runs())
    w.send(ResumePipeline(pipeline_id="p1"))
    new = w.runs()[before:]
    assert [(r.stage, r.attempt) for r in new] == [("c", 2)]
    w.succeed("c")
    assert [(r.stage, r.attempt) for r in w.runs()[before + 1 :]] == [("d", 1)]
    w.succeed("d")
    assert w.status() == "succeeded"
    ran = [(r.stage, r.attempt) for r in w.runs()]
    assert ran.count(("a", 1)) == 1 and ran.count(("b", 1)) == 1


def test_retry_stage_of_a_failed_branch():
    w = World()
    w.submit([cmd("a"), cmd("b", ["a"])])
    w.fail("a")
    w.send(RetryStage(pipeline_id="p1", stage="a"))
    assert w.run_for("a").attempt == 2
    w.succeed("a")
    w.succeed("b")
    assert w.status() == "succeeded"


def test_silent_agent_loses_its_stage_which_runs_again_elsewhere():
    w = World(agents={"a1": AgentView("a1", 1, 1), "a2": AgentView("a2", 1, 0)})
    w.submit([cmd("a")])
    assert w.run_for("a").agent_id == "a1"
    w.start("a")
    w.agents = {"a1": AgentView("a1", 1, 1, alive=False), "a2": AgentView("a2", 1, 1)}
    w.tick(30, silent=["a1"])
    again = w.run_for("a")
    assert (again.agent_id, again.attempt) == ("a2", 2)
    assert w.view()["stages"][0]["attempts"][0]["status"] == "lost"
    assert w.replayed_view() == w.view()


def test_timeout_cancels_and_retries():
    w = World()
    w.submit([cmd("a", timeout_s=60, retries={"max_attempts": 2, "backoff_s": 0})])
    w.start("a")
    w.tick(61)
    cancels = [c.data for c in w.commands if isinstance(c.data, CancelStage)]
    assert cancels and cancels[0].run_command_id == "p1:a:1"
    w.tick(0.5)
    assert w.run_for("a").attempt == 2


def test_rejected_stage_is_placed_elsewhere_under_the_same_attempt():
    w = World(agents={"a1": AgentView("a1", 4, 4), "a2": AgentView("a2", 2, 2)})
    w.submit([cmd("a", resources={"gpus": 2})])
    assert w.run_for("a").agent_id == "a1"
    w.reject("a")
    again = w.run_for("a")
    assert (again.agent_id, again.attempt, again.command_id) == ("a2", 1, "p1:a:1")


def test_no_agent_fits_waits_with_a_reason_then_dispatches_when_one_appears():
    w = World(agents={"a1": AgentView("a1", 1, 1, labels=frozenset({"cpu"}))})
    w.submit([cmd("a", resources={"gpus": 2, "labels": ["a100"]})])
    assert w.runs() == []
    stage = w.view()["stages"][0]
    assert stage["status"] == "waiting"
    assert stage["waiting_reason"] == "no live agent has 2 free GPU(s) and labels ['a100']"
    assert not w.tick(1).events  # no news: nothing recorded
    w.agents["big"] = AgentView("big", 8, 8, labels=frozenset({"a100"}))
    w.tick(1)
    assert w.run_for("a").agent_id == "big"


def test_placement_respects_capacity_within_one_decision():
    w = World(agents={"a1": AgentView("a1", 2, 2), "a2": AgentView("a2", 2, 2)})
    w.submit(
        [
            cmd("x", resources={"gpus": 2}),
            cmd("y", resources={"gpus": 2}),
            cmd("z", resources={"gpus": 2}),
        ]
    )
    assert sorted(r.agent_id for r in w.runs()) == ["a1", "a2"]
    assert [s["status"] for s in w.view()["stages"]].count("waiting") == 1


def test_cached_stage_reuses_a_prior_success():
    stages = [cmd("a", cache=True)]
    first = World()
    first.submit(stages)
    first.succeed("a", {"checkpoint": "/c/a"})
    from posttrain.orchestrator.core.decide import cache_entries

    (entry,) = cache_entries(first.state)
    second = World(pipeline_id="p2")
    state = PipelineState("p2")
    from datetime import UTC, datetime

    from posttrain.events import Envelope
    from posttrain.events.messages import SubmitPipeline

    submit = Envelope(
        id="s2",
        occurred_at=datetime.now(UTC),
        key="p2",
        data=SubmitPipeline(
            pipeline_id="p2", name="again", stages=[StageSpec.model_validate(s) for s in stages]
        ),
    )
    cache = {entry.key: CacheEntry(entry.entry.outputs, entry.entry.command_id)}
    decision = decide(state, submit, Context(agents=second.agents, cache=cache))
    assert [e.type for e in decision.events] == [
        "PipelineSubmitted",
        "StageCached",
        "PipelineSucceeded",
    ]
    assert state.stages["a"].outputs == {"checkpoint": "/c/a"}
    assert state.stages["a"].cached_from == "p1:a:1"
    assert not decision.commands


def test_cancel_stops_running_stages():
    w = World()
    w.submit([cmd("a"), cmd("b", ["a"])])
    w.start("a")
    w.send(CancelPipeline(pipeline_id="p1", reason="user"))
    assert w.status() == "cancelled"
    assert [c.data.run_command_id for c in w.commands if isinstance(c.data, CancelStage)] == [
        "p1:a:1"
    ]
    assert [s["status"] for s in w.view()["stages"]] == ["cancelled", "cancelled"]
    w.succeed("a")  # a late report changes nothing
    assert w.status() == "cancelled"


def test_actions_reach_the_agent_once():
    w = World()
    w.submit([train("a")])
    w.start("a")
    action = RequestAction(
        action_id="act-1",
        pipeline_id="p1",
        stage="a",
        attempt=1,
        action="adjust_learning_rate",
        factor=0.1,
        reason="grad explosion",
    )
    w.send(action)
    w.send(action)
    sent = [c.data for c in w.commands if isinstance(c.data, AdjustLearningRate)]
    assert len(sent) == 1 and sent[0].factor == 0.1 and sent[0].run_command_id == "p1:a:1"
    stale = action.model_copy(update={"action_id": "act-2", "attempt": 7})
    [refused] = w.send(stale).events
    assert refused.type == "ActionRefused" and "attempt 1, not 7" in refused.data.reason
    assert not w.send(stale).commands


def test_reports_for_other_attempts_or_unknown_pipelines_are_ignored():
    w = World()
    w.submit([cmd("a", retries={"max_attempts": 2, "backoff_s": 0})])
    w.fail("a")
    w.tick(1)
    assert w.run_for("a").attempt == 2
    from posttrain.events.messages import StageSucceeded

    late = StageSucceeded(
        pipeline_id="p1",
        stage="a",
        attempt=1,
        command_id="p1:a:1",
        agent_id="a1",
        job_id="p1.a",
        finished_at=1.0,
    )
    assert not w.send(late)
    other = World(pipeline_id="never")
    assert not other.send(late.model_copy(update={"pipeline_id": "never"}))


def test_invalid_submission_is_rejected_with_every_error():
    w = World()
    w.submit([cmd("a", ["ghost"]), {"name": "b", "task": "nope"}])
    assert w.status() == "rejected"
    assert {e["field"] for e in w.view()["errors"]} == {"depends_on", "task"}
    assert w.runs() == []


def test_duplicate_submission_changes_nothing():
    w = World()
    w.submit(FAN)
    assert not w.submit(FAN)


def test_cancel_one_stage_through_an_action():
    w = World()
    w.submit([cmd("a"), cmd("b"), cmd("c", ["a"])])
    w.start("a")
    w.send(
        RequestAction(
            action_id="stop-a",
            pipeline_id="p1",
            stage="a",
            attempt=1,
            action="cancel",
            reason="user",
        )
    )
    cancel = [c.data for c in w.commands if isinstance(c.data, CancelStage)]
    assert [c.run_command_id for c in cancel] == ["p1:a:1"]
    w.fail("a", kind="cancelled")  # the agent confirms
    assert w.status("a") == "cancelled"
    assert w.status() == "running"  # b still runs
    w.succeed("b")
    assert w.status() == "failed"  # c can never run: the pipeline ends, resumable
    w.send(ResumePipeline(pipeline_id="p1"))
    assert w.run_for("a").attempt == 2


def test_run_stage_carries_the_resources_the_agent_checks():
    w = World(agents={"a1": AgentView("a1", 4, 4, labels=frozenset({"a100"}))})
    w.submit([cmd("a", resources={"gpus": 2, "labels": ["a100"]})])
    run = w.run_for("a")
    assert (run.resources.gpus, run.resources.labels) == (2, ["a100"])


def _refusals(decision):
    return [
        (e.data.command, e.data.stage, e.data.reason)
        for e in decision.events
        if e.data.TYPE == "CommandRefused"
    ]


def test_a_command_for_a_pipeline_never_submitted_is_refused_on_the_record():
    from posttrain.events.messages import CancelPipeline, RequestAction, RetryStage

    w = World(pipeline_id="ghost")
    never = "no pipeline 'ghost': it was never submitted"
    assert _refusals(w.send(ResumePipeline(pipeline_id="ghost"))) == [
        ("ResumePipeline", None, never)
    ]
    assert _refusals(w.send(RetryStage(pipeline_id="ghost", stage="a"))) == [
        ("RetryStage", "a", never)
    ]
    assert _refusals(w.send(CancelPipeline(pipeline_id="ghost"))) == [
        ("CancelPipeline", None, never)
    ]
    action = w.send(
        RequestAction(action_id="x1", pipeline_id="ghost", stage="a", attempt=1, action="pause")
    )
    assert [(e.data.TYPE, e.data.reason) for e in action.events] == [("ActionRefused", never)]
    # On the record, and nothing else: the pipeline is still unknown (and can be submitted).
    assert w.state.stages == {}
    w.submit([cmd("a")])
    assert w.status() == "running"


def test_a_command_that_changes_nothing_says_why():
    from posttrain.events.messages import CancelPipeline, RetryStage

    w = World()
    w.submit([cmd("a"), cmd("b", ["a"])])
    assert _refusals(w.send(ResumePipeline(pipeline_id="p1"))) == [
        (
            "ResumePipeline",
            None,
            "no stage failed, was cancelled or lost: there is nothing to resume",
        )
    ]
    assert _refusals(w.send(RetryStage(pipeline_id="p1", stage="zzz"))) == [
        ("RetryStage", "zzz", "the pipeline has no stage 'zzz'")
    ]
    assert _refusals(w.send(RetryStage(pipeline_id="p1", stage="a"))) == [
        (
            "RetryStage",
            "a",
            "stage 'a' is assigned: only a failed, cancelled or lost stage is retried",
        )
    ]
    w.succeed("a")
    w.succeed("b")
    assert _refusals(w.send(CancelPipeline(pipeline_id="p1"))) == [
        ("CancelPipeline", None, "the pipeline succeeded: there is nothing to cancel")
    ]
    assert _refusals(w.send(ResumePipeline(pipeline_id="p1"))) == [
        ("ResumePipeline", None, "the pipeline succeeded: there is nothing to resume")
    ]
    assert w.replayed_view() == w.view()  # refusals replay to the same state
