"""The stage process answers every control it hands its task: applied, or refused on the record
(a python function that ignores a control, a stage that ends before applying one)."""

from __future__ import annotations

from pathlib import Path

from posttrain.events.codec import decode
from posttrain.events.messages import RunStage
from posttrain.trainer_agent.stage_files import (
    CONTROL,
    EVENTS,
    ControlInbox,
    EventOutbox,
    append_line,
)
from posttrain.trainer_agent.tasks.context import StageContext


def _context(tmp_path: Path, task: str = "python") -> StageContext:
    run = RunStage(
        command_id="p:s:1",
        agent_id="a",
        pipeline_id="p",
        stage="s",
        attempt=1,
        job_id="j",
        task=task,
        params={},
    )
    return StageContext(
        run=run,
        attempt_dir=tmp_path,
        work_dir=tmp_path,
        reporter=None,  # type: ignore[arg-type]
        inbox=ControlInbox(tmp_path, 0),
        outbox=EventOutbox(tmp_path, run),
    )


def _events(tmp_path: Path) -> list[dict]:
    """The stage's reports, each read back by the codec (a message, as the agent relays it)."""
    path = tmp_path / EVENTS
    lines = path.read_bytes().splitlines() if path.exists() else []
    return [{"type": m.TYPE, **m.model_dump()} for m in (decode(x).data for x in lines)]


def test_a_control_the_task_ignores_is_refused_at_the_next_boundary(tmp_path):
    ctx = _context(tmp_path)
    append_line(tmp_path / CONTROL, {"type": "ForceCheckpoint", "action_id": "c1"})
    append_line(tmp_path / CONTROL, {"type": "PauseStage", "action_id": "p1"})
    directive = ctx.poll_control(3)
    ctx.action_applied(directive.applied[1], 3)  # the loop pauses, but saves nothing
    assert [e["type"] for e in _events(tmp_path)] == ["ActionApplied"]
    ctx.poll_control(4)
    [_, refused] = _events(tmp_path)
    assert (refused["type"], refused["action_id"], refused["action"], refused["step"]) == (
        "ActionRefused",
        "c1",
        "force_checkpoint",
        4,
    )
    assert refused["reason"] == "the python stage did not apply it"
    ctx.poll_control(5)
    assert len(_events(tmp_path)) == 2  # answered once


def test_a_rollback_left_unanswered_when_the_stage_ends_is_refused(tmp_path):
    ctx = _context(tmp_path, task="train_model")
    append_line(tmp_path / CONTROL, {"type": "RollbackStage", "action_id": "r1", "step": 9})
    assert ctx.poll_control(10).rollback is not None
    ctx.refuse_unanswered(10, "the stage ended (succeeded) before applying it")
    [refused] = _events(tmp_path)
    assert (refused["action_id"], refused["action"]) == ("r1", "rollback")
    assert "ended" in refused["reason"]
