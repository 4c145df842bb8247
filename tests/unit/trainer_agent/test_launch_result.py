"""result-<n>.json: a launch's result written as a codec-encoded LaunchEnded and read back as
exactly the dict the stage built (the agent's core decides on that dict, and the journal's
golden histories hold it to the same outcome), an older stage's plain dict still read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from posttrain.events.codec import decode
from posttrain.events.messages.launch import LAUNCH_TYPES, LaunchEnded
from posttrain.trainer_agent.stage_files import read_result, result_path, write_result

SHAPES: dict[str, dict[str, Any]] = {
    "succeeded": {
        "status": "succeeded",
        "outputs": {"model": "/w/model", "metrics": {"loss": 0.25}},
        "control_offset": 0,
        "finished_at": 1700000000.5,
    },
    "paused": {
        "status": "paused",
        "step": 40,
        "checkpoint": "/c/40",
        "non_finite": ["loss"],
        # set to null: the resume has no good checkpoint (not "go on from /c/40")
        "resume_checkpoint": None,
        "outputs": {},
        "control_offset": 95,
        "finished_at": 1700000001.0,
    },
    "failed": {
        "status": "failed",
        "kind": "oom",
        "error": "CUDA out of memory",
        "details": {"exception": "torch.OutOfMemoryError", "memory": {"rss_bytes": 7}},
    },
    "failed_own_kind": {
        "status": "failed",
        "kind": "something_else",
        "error": "a task named its own kind",
        "details": {},
        "finished_at": 3.0,
    },
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_result_reads_back_as_the_dict_that_was_written(tmp_path: Path, shape: str) -> None:
    path = result_path(tmp_path, 1)
    write_result(path, SHAPES[shape], key="p-1")
    assert read_result(path) == SHAPES[shape]
    # Key for key: a field left out is not read back as null, nor a null as left out.
    assert set(read_result(path) or {}) == set(SHAPES[shape])


def test_the_file_is_a_codec_encoded_launch_ended(tmp_path: Path) -> None:
    path = result_path(tmp_path, 2)
    write_result(path, SHAPES["paused"], key="p-1")
    doc = orjson.loads(path.read_bytes())
    assert (doc["type"], doc["version"], doc["key"]) == ("LaunchEnded", 1, "p-1")
    message = decode(path.read_bytes(), types=LAUNCH_TYPES).data
    assert isinstance(message, LaunchEnded)
    assert (message.status, message.step, message.resume_checkpoint) == ("paused", 40, None)


def test_numpy_outputs_are_written_as_plain_numbers_as_before(tmp_path: Path) -> None:
    path = result_path(tmp_path, 1)
    outputs = {"loss": np.float32(0.5), "steps": np.int64(3), "bad": float("nan")}
    write_result(path, {"status": "succeeded", "outputs": outputs}, key="p")
    # NaN was always written as null by the plain-dict writer (orjson): still so.
    assert read_result(path) == {
        "status": "succeeded",
        "outputs": {"loss": 0.5, "steps": 3, "bad": None},
    }


def test_an_older_stage_plain_dict_is_read_as_it_is(tmp_path: Path) -> None:
    path = result_path(tmp_path, 1)
    old = {"status": "paused", "step": 10, "checkpoint": "/c/10", "control_offset": 3}
    path.write_bytes(orjson.dumps(old))
    assert read_result(path) == old


def test_no_file_or_a_torn_one_is_no_result_yet(tmp_path: Path) -> None:
    path = result_path(tmp_path, 1)
    assert read_result(path) is None
    path.write_bytes(b'{"status": "succ')
    assert read_result(path) is None


def test_a_result_from_a_newer_writer_is_a_failure_that_says_why(tmp_path: Path) -> None:
    path = result_path(tmp_path, 1)
    write_result(path, SHAPES["succeeded"], key="p")
    doc = orjson.loads(path.read_bytes())
    path.write_bytes(orjson.dumps({**doc, "version": 99}))
    result = read_result(path)
    assert result is not None
    assert (result["status"], result["kind"]) == ("failed", "error")
    assert "result-1.json" in result["error"] and "future_version" in result["error"]


@pytest.mark.parametrize(
    ("result", "field"),
    [
        ({"status": "failed", "kind": "error"}, "kind and error"),
        ({"status": "finished", "outputs": {}}, "status"),
        ({"status": "paused", "step": "forty"}, "step"),
    ],
)
def test_a_malformed_result_is_refused_at_the_writer(
    tmp_path: Path, result: dict[str, Any], field: str
) -> None:
    path = result_path(tmp_path, 1)
    with pytest.raises(ValidationError, match=field):
        write_result(path, result, key="p")
    assert not path.exists()
