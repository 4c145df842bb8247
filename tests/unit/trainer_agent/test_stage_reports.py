"""The files between an agent and its stage process (events.jsonl, control.jsonl) hold
codec-encoded messages; a bare line, as they were written before, is still read the same."""

from __future__ import annotations

import orjson

from posttrain.events.messages import (
    ActionApplied,
    ActionRefused,
    AdjustLearningRate,
    CheckpointSaved,
    RunStage,
)
from posttrain.trainer_agent.core.reports import checkpoint_path, event_message
from posttrain.trainer_agent.core.state import Entry, Status
from posttrain.trainer_agent.stage_files import (
    CONTROL,
    EVENTS,
    ControlInbox,
    EventOutbox,
    append_line,
    append_message,
)

RUN = RunStage(
    command_id="p:train:1",
    agent_id="agent-1",
    pipeline_id="p",
    stage="train",
    attempt=1,
    job_id="j",
    task="train_model",
    params={},
)


def _entry(tmp_path) -> Entry:
    return Entry(RUN.command_id, RUN.model_dump(mode="json"), Status.RUNNING, str(tmp_path))


def _relayed(tmp_path):
    entry = _entry(tmp_path)
    lines = (tmp_path / EVENTS).read_bytes().splitlines()
    return [event_message(entry, orjson.loads(line), "agent-1") for line in lines]


def test_what_the_stage_writes_is_what_the_agent_relays(tmp_path):
    outbox = EventOutbox(tmp_path, RUN)
    outbox.checkpoint_saved(4, "/ckpt/checkpoint-4", "forced", ("loss",))
    outbox.action_applied("a1", "adjust_learning_rate", 4, {"factor": 0.5})
    outbox.action_refused("a2", "rollback", None, "no checkpoint before step 1")
    saved, applied, refused = _relayed(tmp_path)
    routing = {"pipeline_id": "p", "stage": "train", "attempt": 1, "job_id": "j"}
    assert isinstance(saved, CheckpointSaved)
    assert saved.model_dump(include={*routing, "step", "path", "reason", "non_finite"}) == {
        **routing,
        "step": 4,
        "path": "/ckpt/checkpoint-4",
        "reason": "forced",
        "non_finite": ["loss"],
    }
    assert isinstance(applied, ActionApplied) and applied.details == {"factor": 0.5}
    assert isinstance(refused, ActionRefused) and refused.step is None
    assert {m.command_id for m in (saved, applied, refused)} == {"p:train:1"}
    # Each line names its type and schema version, as a message on Kafka does.
    first = orjson.loads((tmp_path / EVENTS).read_bytes().splitlines()[0])
    assert (first["type"], first["version"]) == ("CheckpointSaved", CheckpointSaved.VERSION)


def test_a_bare_line_from_an_older_stage_process_is_still_relayed(tmp_path):
    (tmp_path / EVENTS).write_bytes(
        b'{"type":"CheckpointSaved","step":3,"path":"/c/checkpoint-3","reason":"forced"}\n'
        b'{"type":"ActionApplied","action_id":"a1","action":"pause","step":3,"details":{}}\n'
    )
    saved, applied = _relayed(tmp_path)
    assert isinstance(saved, CheckpointSaved) and (saved.step, saved.stage) == (3, "train")
    assert isinstance(applied, ActionApplied) and applied.action == "pause"


def test_a_line_of_no_report_type_is_not_relayed(tmp_path):
    outbox = EventOutbox(tmp_path, RUN)
    outbox.checkpoint_saved(1, "/c", "scheduled")
    (tmp_path / EVENTS).open("ab").write(b'{"type":"Nope","version":1,"data":{}}\n')
    assert [type(m) for m in _relayed(tmp_path)] == [CheckpointSaved, type(None)]


def test_the_checkpoint_a_line_reports_is_read_in_either_form(tmp_path):
    EventOutbox(tmp_path, RUN).checkpoint_saved(2, "/c/checkpoint-2", "scheduled")
    EventOutbox(tmp_path, RUN).action_applied("a1", "pause", 2, {})
    lines = [orjson.loads(x) for x in (tmp_path / EVENTS).read_bytes().splitlines()]
    assert [checkpoint_path(x) for x in lines] == ["/c/checkpoint-2", None]
    bare = {"type": "CheckpointSaved", "step": 3, "path": "/c/checkpoint-3"}
    assert checkpoint_path(bare) == "/c/checkpoint-3"


def test_a_control_command_is_written_as_a_message_and_read_like_a_bare_line(tmp_path):
    lr = AdjustLearningRate(
        action_id="lr-1",
        agent_id="agent-1",
        run_command_id=RUN.command_id,
        pipeline_id="p",
        stage="train",
        attempt=1,
        reason="grad explosion",
        factor=0.5,
    )
    append_message(tmp_path / CONTROL, lr, key="p")
    append_line(tmp_path / CONTROL, {"type": "ForceCheckpoint", "action_id": "ck-1"})
    first = orjson.loads((tmp_path / CONTROL).read_bytes().splitlines()[0])
    assert (first["type"], first["data"]["factor"]) == ("AdjustLearningRate", 0.5)
    directive = ControlInbox(tmp_path, 0).poll()
    assert (directive.lr_factor, directive.save) == (0.5, True)
    assert [(a.action_id, a.action) for a in directive.applied] == [
        ("lr-1", "adjust_learning_rate"),
        ("ck-1", "force_checkpoint"),
    ]
