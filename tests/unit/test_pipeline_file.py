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
