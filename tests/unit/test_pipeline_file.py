"""A pipeline file's relative paths are made absolute at submission, from the file's directory."""

from __future__ import annotations

from pathlib import Path

from posttrain.orchestrator.core.dag import validate
from posttrain.pipeline_cli import load_pipeline_file

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pipelines" / "arithmetic.yaml"


def test_relative_paths_that_exist_next_to_the_file_become_absolute(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("{}\n")
    (tmp_path / "pipes").mkdir()
    pipeline = tmp_path / "pipes" / "p.yaml"
    pipeline.write_text(
        """
stages:
  - name: prep
    task: preprocess_dataset
    params: {input_path: ../data/train.jsonl, model_path: tiny-llama}
  - name: run
    task: command
    depends_on: [prep]
    params: {argv: [python3, ../data/train.jsonl, "${prep.outputs.dataset}"]}
"""
    )
    said: list[str] = []
    doc = load_pipeline_file(str(pipeline), say=said.append)
    absolute = str((tmp_path / "data" / "train.jsonl").resolve())
    assert doc.stages[0]["params"] == {"input_path": absolute, "model_path": "tiny-llama"}
    assert doc.stages[1]["params"]["argv"] == ["python3", absolute, "${prep.outputs.dataset}"]
    assert said == [
        f"stage 'prep' params.input_path: ../data/train.jsonl -> {absolute}",
        f"stage 'run' params.argv[1]: ../data/train.jsonl -> {absolute}",
    ]


def test_the_example_pipeline_is_valid_and_names_its_data_absolutely() -> None:
    doc = load_pipeline_file(str(EXAMPLE))
    specs, errors = validate(doc.stages)
    assert errors == []
    data = EXAMPLE.parents[1] / "data"
    assert specs[0].params["input_path"] == str(data / "addition_train.jsonl")
    assert specs[-1].params["eval_data_path"] == str(data / "addition_eval.jsonl")


def test_status_prints_an_error_as_one_line_and_in_full_when_asked(capsys) -> None:
    from posttrain.pipeline_cli import _print_status

    traceback = (
        'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
        "    boom()\nValueError: learning rate must be positive\n"
    )
    status = {
        "pipeline_uuid": "p",
        "name": "n",
        "status": "failed",
        "errors": [],
        "stages": [
            {
                "name": "train",
                "status": "failed",
                "attempt": 1,
                "task_id": "t",
                "agent_id": "a",
                "waiting_reason": None,
                "error": traceback,
            }
        ],
    }
    _print_status(status)
    short = capsys.readouterr().out.splitlines()
    assert len(short) == 2
    assert short[1].endswith("ValueError: learning rate must be positive (more with --verbose)")
    _print_status(status, verbose=True)
    full = capsys.readouterr().out
    assert "    boom()" in full and "Traceback (most recent call last):" in full
