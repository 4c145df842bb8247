"""A control that reaches a stage after its last step boundary is refused, not lost.

Found by the scale-out chaos run (tests/chaos): diagnostics asked for a checkpoint on a new best
reward at the DPO stage's last step; the agent wrote it to the stage's control file 0.2 s
before the stage ended, the stage never read it, and no outcome of the action was ever
reported. Now the look that collects the stage's result refuses every control line past the
offset the result says the stage read (a paused stage keeps them: its resume reads on)."""

from __future__ import annotations

import json

from tests.unit.trainer_agent.golden.play import play

RUN = {
    "type": "RunStage",
    "data": {
        "command_id": "p:dpo:1",
        "agent_id": "golden-agent",
        "pipeline_id": "p",
        "stage": "dpo",
        "attempt": 1,
        "job_id": "p.dpo",
        "task": "train_model",
        "params": {"config": {"algorithm": "dpo"}},
        "resources": {"gpus": 0, "labels": []},
    },
}
LAUNCHED = {
    "kind": "launched",
    "command_id": "p:dpo:1",
    "pid": 501,
    "pid_start": 1501,
    "started_at": 100.5,
    "resume_from": None,
    "at": 100.5,
    "gpu_ids": [],
    "control_offset": 0,
}
LATE = {"type": "ForceCheckpoint", "action_id": "late-1", "run_command_id": "p:dpo:1"}
RESUME = {"type": "ResumeStage", "action_id": "r-1", "run_command_id": "p:dpo:1"}


def history(result: dict, unread: list[dict]) -> list[str]:
    return [
        json.dumps({"observe": "RunReceived", "now": 100.0, "command": RUN}),
        json.dumps({"journal": LAUNCHED}),
        json.dumps(
            {
                "observe": "Looked",
                "command_id": "p:dpo:1",
                "now": 110.0,
                "alive": True,
                "result": result,
                "unread_controls": unread,
            }
        ),
    ]


def sent(played: dict) -> list[dict]:
    return [a for a in played["decisions"][-1]["actions"] if "send" in a]


def test_a_control_the_ended_stage_never_read_is_refused_before_its_outcome():
    result = {"status": "succeeded", "outputs": {}, "control_offset": 120}

    actions = sent(play(history(result, [LATE, RESUME])))

    assert [a["send"] for a in actions] == ["ActionRefused", "StageSucceeded"]
    refused = actions[0]
    assert refused["action_id"] == "late-1" and refused["action"] == "force_checkpoint"
    assert (refused["pipeline_id"], refused["stage"], refused["attempt"]) == ("p", "dpo", 1)
    assert refused["reason"] == "the stage ended (succeeded) first"


def test_a_stage_that_read_every_control_ends_with_its_outcome_alone():
    result = {"status": "failed", "kind": "error", "error": "boom", "details": {}}

    actions = sent(play(history(result, [])))

    assert [a["send"] for a in actions] == ["StageFailed"]


def test_the_control_file_past_the_stages_offset_is_what_it_never_read(tmp_path):
    from posttrain.events.messages import ForceCheckpoint
    from posttrain.trainer_agent.stage_files import CONTROL, append_message, unread_controls

    def control(action_id: str) -> ForceCheckpoint:
        return ForceCheckpoint(
            action_id=action_id,
            agent_id="a",
            run_command_id="p:dpo:1",
            pipeline_id="p",
            stage="dpo",
            attempt=1,
            reason="test",
        )

    read_up_to = append_message(tmp_path / CONTROL, control("read-1"), "p")
    append_message(tmp_path / CONTROL, control("late-1"), "p")

    unread = unread_controls(tmp_path, read_up_to)

    assert [(c["type"], c["action_id"]) for c in unread] == [("ForceCheckpoint", "late-1")]
    assert [c["action_id"] for c in unread_controls(tmp_path, 0)] == ["read-1", "late-1"]
