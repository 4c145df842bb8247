"""The stage process's witness file: off unless asked, one line per start when asked."""

from __future__ import annotations

from posttrain.events.messages import RunStage
from posttrain.trainer_agent.witness import ENV_WITNESS_DIR, read_witness, witness_start

RUN = RunStage(
    command_id="p:sft:2",
    agent_id="a",
    pipeline_id="p",
    stage="sft",
    attempt=2,
    job_id="p.sft",
    task="train_model",
    params={},
)


def test_nothing_is_written_unless_the_directory_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_WITNESS_DIR, raising=False)
    monkeypatch.chdir(tmp_path)

    witness_start(RUN, 1, None)

    assert list(tmp_path.iterdir()) == []
    assert read_witness(tmp_path) == []


def test_each_start_is_one_line_naming_the_attempt_the_launch_and_the_process(
    tmp_path, monkeypatch
):
    monkeypatch.setenv(ENV_WITNESS_DIR, str(tmp_path))

    witness_start(RUN, 1, None)
    witness_start(RUN, 2, "/ckpt/checkpoint-40")

    lines = read_witness(tmp_path)
    assert [(w["stage"], w["attempt"], w["launch"], w["resume_from"]) for w in lines] == [
        ("sft", 2, 1, None),
        ("sft", 2, 2, "/ckpt/checkpoint-40"),
    ]
    assert all(w["command_id"] == "p:sft:2" and isinstance(w["pid"], int) for w in lines)
