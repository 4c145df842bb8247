"""The journal's fold and the decisions the agent takes from it."""

from __future__ import annotations

from posttrain.trainer_agent.core.journal import (
    Capacity,
    ControlDecision,
    Ignore,
    Reject,
    Replay,
    Start,
    Status,
    decide_control,
    decide_recovery,
    decide_run,
    fold,
    usage,
)

RUN = {"command_id": "c1", "pipeline_id": "p", "stage": "s", "attempt": 1, "job_id": "j"}
ROOMY = Capacity(free_gpu_ids=(0, 1, 2), labels=frozenset({"a100"}), free_slots=2)
SUCCEEDED = {"type": "StageSucceeded", "data": {"outputs": {"checkpoint": "/ckpt"}}}


def _records(*extra):
    return [
        {"kind": "accepted", "command_id": "c1", "run": RUN, "attempt_dir": "/d", "gpu_ids": [1]},
        {"kind": "launched", "command_id": "c1", "pid": 42, "pid_start": 7, "started_at": 1.0},
        *extra,
    ]


def test_a_new_command_starts_on_free_gpus_within_capacity():
    assert decide_run(None, 2, ["a100"], ROOMY) == Start((0, 1))
    assert isinstance(decide_run(None, 4, [], ROOMY), Reject)
    assert "h100" in decide_run(None, 0, ["h100"], ROOMY).reason
    full = Capacity((0,), frozenset(), free_slots=0)
    assert isinstance(decide_run(None, 0, [], full), Reject)


def test_a_finished_command_is_replayed_never_run_again():
    entries = fold(_records({"kind": "finished", "command_id": "c1", "outcome": SUCCEEDED}))
    assert decide_run(entries["c1"], 0, [], ROOMY) == Replay(SUCCEEDED)


def test_a_running_or_paused_command_is_left_alone():
    running = fold(_records())["c1"]
    assert isinstance(decide_run(running, 0, [], ROOMY), Ignore)
    paused = fold(
        _records(
            {
                "kind": "paused",
                "command_id": "c1",
                "checkpoint": "/c-9",
                "step": 9,
                "control_offset": 120,
            }
        )
    )["c1"]
    assert paused.status is Status.PAUSED and paused.paused_checkpoint == "/c-9"
    assert paused.control_offset == 120 and paused.gpu_ids == ()
    assert decide_run(paused, 0, [], ROOMY) == Ignore("paused: ResumeStage continues it")


def test_the_first_outcome_is_the_outcome():
    failed = {"type": "StageFailed", "data": {"kind": "error"}}
    entries = fold(
        _records(
            {"kind": "finished", "command_id": "c1", "outcome": SUCCEEDED},
            {"kind": "finished", "command_id": "c1", "outcome": failed},
        )
    )
    assert entries["c1"].outcome == SUCCEEDED


def test_records_of_unknown_commands_and_unknown_kinds_are_ignored():
    entries = fold([{"kind": "launched", "command_id": "ghost", "pid": 1}, {"kind": "?"}])
    assert entries == {}
    entries = fold(_records({"kind": "from-the-future", "command_id": "c1"}))
    assert entries["c1"].status is Status.RUNNING


def test_fold_continues_from_a_state():
    first = fold(_records())
    later = fold(
        [{"kind": "events_published", "command_id": "c1", "count": 3, "offset": 300}], first
    )
    assert first["c1"].events_published == 0
    assert (later["c1"].events_published, later["c1"].events_offset) == (3, 300)
    stale = fold(
        [{"kind": "events_published", "command_id": "c1", "count": 2, "offset": 200}], later
    )
    assert stale["c1"].events_offset == 300


def test_control_decisions_follow_the_stage_status():
    running = fold(_records())["c1"]
    paused = fold(_records({"kind": "paused", "command_id": "c1", "step": 4}))["c1"]
    done = fold(_records({"kind": "finished", "command_id": "c1", "outcome": SUCCEEDED}))["c1"]
    assert decide_control(running, "force_checkpoint").action == "forward"
    assert decide_control(running, "resume") == ControlDecision("refuse", "not paused")
    assert decide_control(paused, "resume").action == "resume"
    assert decide_control(paused, "cancel").action == "cancel_paused"
    assert decide_control(paused, "adjust_learning_rate").action == "queue"
    assert decide_control(running, "rollback").action == "forward"
    assert decide_control(paused, "rollback").action == "queue"
    assert decide_control(paused, "pause") == ControlDecision("refuse", "already paused")
    assert decide_control(done, "pause") == ControlDecision("refuse", "the stage has finished")
    assert decide_control(None, "pause").action == "refuse"


def test_recovery_after_a_restart():
    running = fold(_records())["c1"]
    assert decide_recovery(running, process_alive=True, result_written=False).action == "adopt"
    assert decide_recovery(running, process_alive=False, result_written=True).action == "collect"
    assert decide_recovery(running, process_alive=False, result_written=False).action == "lost"
    done = fold(_records({"kind": "finished", "command_id": "c1", "outcome": SUCCEEDED}))["c1"]
    assert decide_recovery(done, False, False).action == "report"


def test_usage_counts_running_stages_and_their_gpus():
    entries = fold(_records())
    assert usage(entries).running == ("c1",) and usage(entries).gpu_ids == frozenset({1})
    paused = fold(_records({"kind": "paused", "command_id": "c1", "step": 1}))
    assert usage(paused).running == () and usage(paused).gpu_ids == frozenset()


def test_a_pause_with_a_poisoned_checkpoint_resumes_from_the_last_good_one():
    paused = {"kind": "paused", "command_id": "c1", "step": 9, "checkpoint": "/c/9"}
    poisoned = fold(_records({**paused, "resume_checkpoint": "/c/5"}))["c1"]
    assert (poisoned.paused_checkpoint, poisoned.resume_checkpoint) == ("/c/9", "/c/5")
    nothing_good = fold(_records({**paused, "resume_checkpoint": None}))["c1"]
    assert nothing_good.resume_checkpoint is None
    # A journal written before checkpoints were marked: the pause's own checkpoint.
    assert fold(_records(paused))["c1"].resume_checkpoint == "/c/9"
