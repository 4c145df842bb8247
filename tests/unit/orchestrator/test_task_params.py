"""Each task's params model (posttrain.events.tasks) is what the validator checks a stage's
values against: a value of the wrong type is refused with the stage and field named, before the
agent would have failed on it."""

from __future__ import annotations

import pytest

from posttrain.events.tasks import CommandParams, TrainParams, task_params
from posttrain.orchestrator.core.dag import validate


def errors_of(stage):
    return [str(e) for e in validate([{"name": "a", **stage}])[1]]


def train(**config):
    return {
        "task": "train_model",
        "params": {"config": {"algorithm": "sft", "model_path": "m", **config}},
    }


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        (
            train(batch_size="8"),
            "stage 'a', field 'params.config.batch_size': Input should be a valid integer",
        ),
        (
            train(batch_size=0),
            "stage 'a', field 'params.config.batch_size': Input should be greater than or equal",
        ),
        (
            train(reward_funcs=3),
            "stage 'a', field 'params.config.reward_funcs': Input should be a valid list",
        ),
        (
            train(resume="yes"),
            "stage 'a', field 'params.config.resume': Input should be a valid boolean",
        ),
        (train(callbacks=[3]), "stage 'a', field 'params.config.callbacks.0."),
        (
            {"task": "preprocess_dataset", "params": {"input_path": "d", "max_rows": -1}},
            "stage 'a', field 'params.max_rows': Input should be greater than or equal to 0",
        ),
        (
            {"task": "run_evaluation", "params": {"models": "m1"}},
            "stage 'a', field 'params.models': Input should be a valid list",
        ),
        (
            {"task": "command", "params": {"argv": ["x"], "env": {"A": [1]}}},
            "stage 'a', field 'params.env.A.",
        ),
        (
            {"task": "python", "params": {"entrypoint": "m:f", "kwargs": []}},
            "stage 'a', field 'params.kwargs': Input should be a valid dictionary",
        ),
        (
            # verl reads only algorithm ppo or grpo: an sft stage on verl is refused up front.
            {**train(backend="verl"), "resources": {"gpus": 1}},
            "stage 'a', field 'params.config.algorithm': Input should be 'ppo' or 'grpo'",
        ),
    ],
)
def test_a_value_of_the_wrong_shape_is_refused_naming_stage_and_field(stage, expected):
    messages = errors_of(stage)
    assert any(m.startswith(expected) for m in messages), messages


def test_what_validates_is_what_the_agent_reads():
    params = {"job_uuid": "j", "config": {"algorithm": "grpo", "model_path": "m", "batch_size": 4}}
    assert errors_of({"task": "train_model", "params": params}) == []
    read = task_params("train_model", params)
    assert isinstance(read, TrainParams)
    assert (read.algorithm, read.model_path, read.batch_size, read.run_mode) == (
        "grpo",
        "m",
        4,
        "local",
    )
    assert not read.on_verl
    one = task_params("run_evaluation", {"model_path": "m", "reward_funcs": "exact_match"})
    assert one.reward_funcs == ["exact_match"]  # one name stands for a list of one
    command = task_params("command", {"argv": ["echo", "hi"], "accepts": ["pause"]})
    assert isinstance(command, CommandParams)
    assert (command.argv, command.accepts, command.env) == (["echo", "hi"], ["pause"], {})
