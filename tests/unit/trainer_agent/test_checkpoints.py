"""Which checkpoint a rollback goes back to and a resume goes on from: never a poisoned one."""

from __future__ import annotations

from posttrain.trainer_agent.checkpoint_files import hf_checkpoints, read_marker, write_marker
from posttrain.trainer_agent.core.checkpoints import Checkpoint, resume_checkpoint, rollback_target

GOOD = [Checkpoint(10, "/c/10"), Checkpoint(20, "/c/20"), Checkpoint(30, "/c/30")]


def test_rollback_goes_to_the_last_checkpoint_before_the_anomaly():
    # checkpoint-30 was saved after step 30's update: a spike at step 30 is in it.
    assert rollback_target(GOOD, before_step=30).step == 20
    assert rollback_target(GOOD, before_step=31).step == 30
    assert rollback_target(GOOD, before_step=10) is None


def test_rollback_prefers_one_at_least_rollback_steps_back_where_there_is_one():
    assert rollback_target(GOOD, before_step=35, rollback_steps=20).step == 10
    assert rollback_target(GOOD, before_step=25, rollback_steps=100).step == 20


def test_a_poisoned_checkpoint_is_never_gone_back_to_nor_resumed_from():
    line = [*GOOD[:2], Checkpoint(25, "/c/25", ("weights", "loss"))]
    assert rollback_target(line, before_step=28).step == 20
    assert resume_checkpoint(line).step == 20
    assert resume_checkpoint([Checkpoint(5, "/c/5", ("weights",))]) is None
    # A non-finite loss alone: the weights are good to go on from.
    assert resume_checkpoint([*GOOD, Checkpoint(33, "/c/33", ("loss",))]).step == 33


def test_markers_are_read_back_and_a_checkpoint_without_one_counts_as_finite(tmp_path):
    for step, non_finite in ((10, ()), (20, ("weights",)), (30, None)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if non_finite is not None:
            write_marker(folder, step, non_finite)
    (tmp_path / "checkpoint-last").mkdir()
    assert hf_checkpoints(tmp_path) == [
        Checkpoint(10, str(tmp_path / "checkpoint-10")),
        Checkpoint(20, str(tmp_path / "checkpoint-20"), ("weights",)),
        Checkpoint(30, str(tmp_path / "checkpoint-30")),
    ]
    weights = tmp_path / "step-4.pt"
    weights.write_bytes(b"")
    write_marker(weights, 4, ("loss",))
    assert read_marker(weights, 4).non_finite == ("loss",)
