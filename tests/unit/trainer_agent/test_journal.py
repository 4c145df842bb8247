"""The journal's fold (typed events, lines of today's format upcast) and the decisions the
agent takes from it."""

from __future__ import annotations

from posttrain.events.messages import (
    AdjustLearningRate,
    CancelStage,
    PauseStage,
    ResumeStage,
    RunStage,
    StageRejected,
)
from posttrain.trainer_agent.core.decide import (
    ControlReceived,
    Record,
    Restarted,
    RunReceived,
    Send,
    Setup,
    Start,
    control_verdict,
    decide,
    recovery_verdict,
)
from posttrain.trainer_agent.core.events import Accepted, from_record
from posttrain.trainer_agent.core.state import Status, fold, usage

RUN = {"command_id": "c1", "pipeline_id": "p", "stage": "s", "attempt": 1, "job_id": "j"}
ROOMY = Setup("a1", "/w", gpus=3, labels=frozenset({"a100"}), slots=2)
SUCCEEDED = {
    "type": "StageSucceeded",
    "data": {**RUN, "agent_id": "a1", "finished_at": 2.0, "outputs": {"checkpoint": "/ckpt"}},
}


def fold_records(records, initial=None):
    """Fold journal lines as written on disk (these have no "v": today's format, upcast)."""
    return fold([e for e in map(from_record, records) if e is not None], initial)


def _records(*extra):
    return [
        {"kind": "accepted", "command_id": "c1", "run": RUN, "attempt_dir": "/d", "gpu_ids": [1]},
        {"kind": "launched", "command_id": "c1", "pid": 42, "pid_start": 7, "started_at": 1.0},
        *extra,
    ]


def run_stage(command_id="c9", gpus=0, labels=()):
    return RunStage(
        command_id=command_id,
        agent_id="a1",
        pipeline_id="p",
        stage="s",
        attempt=1,
        job_id="j",
        task="command",
        params={},
        resources={"gpus": gpus, "labels": list(labels)},
    )


def test_a_new_command_starts_on_free_gpus_within_capacity():
    decision = decide({}, RunReceived(run_stage(gpus=2, labels=["a100"]), 5.0), ROOMY)
    accepted, start = decision.actions
    assert isinstance(accepted, Record) and isinstance(accepted.event, Accepted)
    assert accepted.event.gpu_ids == (0, 1) and accepted.event.attempt_dir == "/w/stages/c9"
    assert isinstance(start, Start) and start.gpu_ids == (0, 1) and start.number == 1
    assert start.started is not None and start.started.started_at == 5.0
    too_big = decide({}, RunReceived(run_stage(gpus=4), 5.0), ROOMY)
    assert too_big.name == "reject" and isinstance(too_big.actions[0].message, StageRejected)
    assert "h100" in decide({}, RunReceived(run_stage(labels=["h100"]), 5.0), ROOMY).reason
    full = Setup("a1", "/w", gpus=1, slots=0)
    assert decide({}, RunReceived(run_stage(), 5.0), full).name == "reject"


def test_a_finished_command_is_replayed_never_run_again():
    entries = fold_records(_records({"kind": "finished", "command_id": "c1", "outcome": SUCCEEDED}))
    decision = decide(entries, RunReceived(run_stage("c1"), 9.0), ROOMY)
    assert decision.name == "replay"
    (send,) = decision.actions
    assert isinstance(send, Send) and send.message.replayed is True
    assert send.message.outputs == {"checkpoint": "/ckpt"}


def test_a_running_or_paused_command_is_left_alone():
    running = fold_records(_records())
    assert decide(running, RunReceived(run_stage("c1"), 9.0), ROOMY).actions == ()
    paused = fold_records(
        _records(
            {
                "kind": "paused",
                "command_id": "c1",
                "checkpoint": "/c-9",
                "step": 9,
                "control_offset": 120,
            }
        )
    )
    entry = paused["c1"]
    assert entry.status is Status.PAUSED and entry.paused_checkpoint == "/c-9"
    assert entry.control_offset == 120 and entry.gpu_ids == ()
    decision = decide(paused, RunReceived(run_stage("c1"), 9.0), ROOMY)
    assert (decision.name, decision.reason) == ("ignore", "paused: ResumeStage continues it")


def test_the_first_outcome_is_the_outcome():
    failed = {"type": "StageFailed", "data": {"kind": "error"}}
    entries = fold_records(
        _records(
            {"kind": "finished", "command_id": "c1", "outcome": SUCCEEDED},
            {"kind": "finished", "command_id": "c1", "outcome": failed},
        )
    )
    assert entries["c1"].outcome == SUCCEEDED


def test_records_of_unknown_commands_and_unknown_kinds_are_ignored():
    assert (
        fold_records([{"kind": "launched", "command_id": "ghost", "pid": 1}, {"kind": "?"}]) == {}
    )
    entries = fold_records(_records({"kind": "from-the-future", "command_id": "c1"}))
    assert entries["c1"].status is Status.RUNNING


def test_fold_continues_from_a_state():
    first = fold_records(_records())
    later = fold_records(
        [{"kind": "events_published", "command_id": "c1", "count": 3, "offset": 300}], first
    )
    assert first["c1"].events_published == 0
    assert (later["c1"].events_published, later["c1"].events_offset) == (3, 300)
    stale = fold_records(
        [{"kind": "events_published", "command_id": "c1", "count": 2, "offset": 200}], later
    )
    assert stale["c1"].events_offset == 300


def test_control_decisions_follow_the_stage_status():
    running = fold_records(_records())["c1"]
    paused = fold_records(_records({"kind": "paused", "command_id": "c1", "step": 4}))["c1"]
    done = fold_records(_records({"kind": "finished", "command_id": "c1", "outcome": SUCCEEDED}))[
        "c1"
    ]
    assert control_verdict(running, "force_checkpoint")[0] == "forward"
    assert control_verdict(running, "resume") == ("refuse", "not paused")
    assert control_verdict(paused, "resume")[0] == "resume"
    assert control_verdict(paused, "cancel")[0] == "cancel_paused"
    assert control_verdict(paused, "adjust_learning_rate")[0] == "queue"
    assert control_verdict(running, "rollback")[0] == "forward"
    assert control_verdict(paused, "rollback")[0] == "queue"
    assert control_verdict(paused, "pause") == ("refuse", "already paused")
    assert control_verdict(done, "pause") == ("refuse", "the stage has finished")
    assert control_verdict(None, "pause")[0] == "refuse"


def _control(cls, **extra):
    return cls(
        action_id="x1",
        agent_id="a1",
        run_command_id="c1",
        pipeline_id="p",
        stage="s",
        attempt=1,
        **extra,
    )


def test_a_cancel_is_forwarded_and_the_stop_scheduled_from_the_observed_time():
    entries = fold_records(_records())
    decision = decide(entries, ControlReceived(_control(CancelStage), 100.0), ROOMY)
    write, stop = decision.actions
    assert type(write.command) is CancelStage
    assert (write.command.action_id, write.command.reason) == ("x1", "")
    assert (stop.event.term_at, stop.event.kill_at) == (130.0, 145.0)
    lr = decide(entries, ControlReceived(_control(AdjustLearningRate, factor=0.5), 1.0), ROOMY)
    assert lr.name == "forward" and len(lr.actions) == 1


def test_a_resume_without_capacity_is_refused_on_the_record():
    paused = fold_records(
        [
            {
                "kind": "accepted",
                "command_id": "c1",
                "run": {**RUN, "resources": {"gpus": 2}},
                "attempt_dir": "/d",
            },
            {"kind": "launched", "command_id": "c1", "pid": 42},
            {"kind": "paused", "command_id": "c1", "step": 4, "checkpoint": "/c/4"},
        ]
    )
    small = Setup("a1", "/w", gpus=1, slots=1)
    decision = decide(paused, ControlReceived(_control(ResumeStage), 1.0), small)
    assert decision.name == "refuse" and "no capacity to resume" in decision.reason
    assert decision.actions[0].message.step == 4
    roomy = decide(paused, ControlReceived(_control(ResumeStage), 1.0), ROOMY)
    (start,) = roomy.actions
    assert (start.number, start.resume_from, start.gpu_ids) == (2, "/c/4", (0, 1))
    named = decide(paused, ControlReceived(_control(ResumeStage, checkpoint="/c/2"), 1.0), ROOMY)
    assert named.actions[0].resume_from == "/c/2"
    assert decide(paused, ControlReceived(_control(PauseStage), 1.0), ROOMY).name == "refuse"


def test_recovery_after_a_restart():
    running = fold_records(_records())["c1"]
    assert recovery_verdict(running, alive=True, result_written=False) == "adopt"
    assert recovery_verdict(running, alive=False, result_written=True) == "collect"
    assert recovery_verdict(running, alive=False, result_written=False) == "lost"
    done = fold_records(_records({"kind": "finished", "command_id": "c1", "outcome": SUCCEEDED}))
    assert recovery_verdict(done["c1"], False, False) == "report"
    lost = decide(fold_records(_records()), Restarted("c1", 50.0), ROOMY)
    assert lost.name == "lost"
    assert lost.actions[1].message.kind == "lost" and lost.actions[1].message.finished_at == 50.0


def test_usage_counts_running_stages_and_their_gpus():
    entries = fold_records(_records())
    assert usage(entries).running == ("c1",) and usage(entries).gpu_ids == frozenset({1})
    paused = fold_records(_records({"kind": "paused", "command_id": "c1", "step": 1}))
    assert usage(paused).running == () and usage(paused).gpu_ids == frozenset()


def test_a_pause_with_a_poisoned_checkpoint_resumes_from_the_last_good_one():
    paused = {"kind": "paused", "command_id": "c1", "step": 9, "checkpoint": "/c/9"}
    poisoned = fold_records(_records({**paused, "resume_checkpoint": "/c/5"}))["c1"]
    assert (poisoned.paused_checkpoint, poisoned.resume_checkpoint) == ("/c/9", "/c/5")
    nothing_good = fold_records(_records({**paused, "resume_checkpoint": None}))["c1"]
    assert nothing_good.resume_checkpoint is None
    # A journal written before checkpoints were marked: the pause's own checkpoint.
    assert fold_records(_records(paused))["c1"].resume_checkpoint == "/c/9"
