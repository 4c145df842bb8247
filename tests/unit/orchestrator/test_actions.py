"""Every RequestAction ends on the pipeline's log: the command sent (ActionRequested), or refused
with the reason (ActionRefused). A duplicate changes nothing."""

from __future__ import annotations

import pytest

from posttrain.events.messages import (
    ActionApplied,
    ActionRefused,
    CheckpointSaved,
    PauseStage,
    RequestAction,
    ResumeStage,
    RollbackStage,
    StagePaused,
)
from posttrain.orchestrator.core.state import ActionOutcome
from tests.unit.orchestrator.sim import World
from tests.unit.orchestrator.test_decide import cmd, train


def request(action, action_id="act-1", stage="t", attempt=1, **fields):
    return RequestAction(
        action_id=action_id,
        pipeline_id="p1",
        stage=stage,
        attempt=attempt,
        action=action,
        reason="test",
        **fields,
    )


def running(*stages):
    w = World()
    w.submit(list(stages) or [train("t")])
    for spec in stages or [train("t")]:
        w.start(spec["name"])
    return w


def refusal(decision):
    [event] = decision.events
    assert event.type == "ActionRefused" and not decision.commands
    return event.data


@pytest.mark.parametrize(
    ("world", "message", "reason"),
    [
        (running, request("pause", stage="ghost"), "has no stage 'ghost'"),
        (running, request("pause", attempt=2), "is at attempt 1, not 2"),
        (running, request("resume"), "not paused: nothing to resume"),
        (running, request("adjust_learning_rate"), "needs a positive factor, got None"),
        (running, request("adjust_learning_rate", factor=-1.0), "positive factor, got -1.0"),
        (running, request("rollback", skip_batches=-3), "negative number of batches"),
        (
            lambda: running(cmd("t")),
            request("pause"),
            "a command stage cannot take 'pause' (it takes cancel)",
        ),
        (
            lambda: running(cmd("t")),
            request("force_checkpoint"),
            "a command stage cannot take 'force_checkpoint'",
        ),
    ],
)
def test_a_request_that_cannot_be_applied_is_refused_with_the_reason(world, message, reason):
    w = world()
    refused = refusal(w.send(message))
    assert refused.action_id == message.action_id and refused.action == message.action
    assert reason in refused.reason, refused.reason
    assert w.replayed_from_the_wire() == w.state


def test_a_stage_not_started_yet_refuses():
    w = World()
    w.submit([train("a"), train("t", ["a"])])
    refused = refusal(w.send(request("force_checkpoint", attempt=0)))
    assert "stage 't' is pending, not running" in refused.reason


def test_a_finished_stage_refuses_and_a_duplicate_is_not_refused_twice():
    w = World()
    w.submit([train("t")])
    w.succeed("t")
    message = request("pause", anomaly_id="an-1", step=40)
    refused = refusal(w.send(message))
    assert "is succeeded, not running" in refused.reason
    assert (refused.anomaly_id, refused.step) == ("an-1", 40)
    assert not w.send(message)  # the same action id: decided already
    assert [e.type for e in w.log].count("ActionRefused") == 1


def test_rollback_is_sent_to_the_agent_with_where_to_go_back_to():
    w = running()
    decision = w.send(
        request("rollback", anomaly_id="an-9", step=30, rollback_steps=10, skip_batches=4)
    )
    [event] = decision.events
    assert event.type == "ActionRequested"
    assert (event.data.step, event.data.rollback_steps, event.data.skip_batches) == (30, 10, 4)
    [(_, command)] = decision.commands
    assert isinstance(command.data, RollbackStage)
    assert (command.data.step, command.data.rollback_steps, command.data.skip_batches) == (
        30,
        10,
        4,
    )
    assert command.data.action_id == "act-1" and command.data.run_command_id == "p1:t:1"
    assert not w.send(request("rollback", step=31))  # same id again: idempotent
    assert w.state.actions == {"act-1": ActionOutcome.REQUESTED}


def test_dry_run_is_decided_and_recorded_and_nothing_is_sent():
    w = running()
    decision = w.send(request("pause", dry_run=True))
    [event] = decision.events
    assert event.type == "ActionRequested" and event.data.dry_run
    assert not decision.commands
    refused = refusal(w.send(request("resume", action_id="act-2", dry_run=True)))
    assert refused.dry_run
    assert w.state.actions == {"act-1": ActionOutcome.DRY_RUN, "act-2": ActionOutcome.REFUSED}


def test_resume_of_a_paused_stage_names_the_checkpoint_and_pause_is_refused_while_paused():
    w = running()
    w.send(request("pause", action_id="pause-1"))
    run = w.run_for("t")
    w.send(StagePaused(**w._report(run), step=12, checkpoint="/c/12"))
    assert w.status("t") == "paused"
    refused = refusal(w.send(request("pause", action_id="pause-2")))
    assert "already paused" in refused.reason
    decision = w.send(request("resume", action_id="resume-1", checkpoint="/c/8"))
    [(_, command)] = decision.commands
    assert isinstance(command.data, ResumeStage) and command.data.checkpoint == "/c/8"
    assert [type(c.data) for c in w.commands[-2:]] == [PauseStage, ResumeStage]


def test_cancel_of_a_paused_stage_is_sent():
    w = running()
    w.send(StagePaused(**w._report(w.run_for("t")), step=3, checkpoint="/c/3"))
    decision = w.send(request("cancel"))
    assert [e.type for e in decision.events] == ["ActionRequested"] and decision.commands


def test_an_agents_refusal_is_recorded_once():
    w = running()
    w.send(request("rollback", step=5))
    run = w.run_for("t")
    report = ActionRefused(
        action_id="act-1",
        pipeline_id="p1",
        stage="t",
        attempt=1,
        action="rollback",
        reason="no checkpoint with finite weights before step 5",
        step=6,
        agent_id=run.agent_id,
        command_id=run.command_id,
        job_id=run.job_id,
    )
    assert [e.type for e in w.send(report).events] == ["ActionRefused"]
    assert not w.send(report)  # redelivered
    assert w.state.actions["act-1"] == ActionOutcome.REFUSED
    assert w.replayed_from_the_wire() == w.state


def test_a_poisoned_checkpoint_is_never_the_one_a_retry_goes_on_from():
    w = World()
    w.submit([train("t", retries={"max_attempts": 2, "backoff_s": 0})])
    w.start("t")
    run = w.run_for("t")
    ids = w._report(run)
    w.send(CheckpointSaved(**ids, step=10, path="/c/10"))
    w.send(CheckpointSaved(**ids, step=20, path="/c/20", non_finite=["weights", "loss"]))
    assert w.state.stages["t"].last_checkpoint == "/c/10"
    w.send(
        StagePaused(
            **ids, step=22, checkpoint="/c/22", non_finite=["weights"], resume_checkpoint="/c/10"
        )
    )
    assert w.state.stages["t"].last_checkpoint == "/c/10"
    w.send(request("cancel"))
    w.fail("t")
    w.tick(1)
    assert w.run_for("t").attempt == 2 and w.run_for("t").resume_from == "/c/10"


def test_a_checkpoint_with_a_non_finite_loss_but_finite_weights_can_be_resumed_from():
    w = running()
    ids = w._report(w.run_for("t"))
    w.send(CheckpointSaved(**ids, step=10, path="/c/10", non_finite=["loss"]))
    assert w.state.stages["t"].last_checkpoint == "/c/10"


def test_a_rollback_makes_its_checkpoint_the_last_one():
    w = running()
    ids = w._report(w.run_for("t"))
    w.send(CheckpointSaved(**ids, step=10, path="/c/10"))
    w.send(CheckpointSaved(**ids, step=20, path="/c/20"))
    w.send(request("rollback", step=15))
    w.send(
        ActionApplied(
            **ids,
            action_id="act-1",
            action="rollback",
            step=21,
            details={"from_step": 21, "to_step": 10, "checkpoint": "/c/10", "skip_batches": 0},
        )
    )
    assert w.state.stages["t"].last_checkpoint == "/c/10"
    assert w.state.actions["act-1"] == ActionOutcome.APPLIED
    assert w.replayed_from_the_wire() == w.state
