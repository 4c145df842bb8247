"""The actions a stage takes follow its params: a stage on verl, a command stage that declares
``accepts``. The DAG validator checks those params; the orchestrator refuses, on the record, an
action the stage does not take, and sends the others to the agent."""

from __future__ import annotations

import pytest

from posttrain.events.messages import AdjustLearningRate, PauseStage
from tests.unit.orchestrator.test_actions import refusal, request, running
from tests.unit.orchestrator.test_dag import errors_of
from tests.unit.orchestrator.test_decide import cmd

PPO = {"algorithm": "ppo", "model_path": "m", "train_data_path": "t.parquet", "kl_coef": 0.01}


def ppo(name="t", gpus=1, **config):
    return {
        "name": name,
        "task": "train_model",
        "params": {"config": {**PPO, **config}},
        "resources": {"gpus": gpus},
    }


def declared(name="t", accepts=("pause",)):
    return cmd(name, params={"argv": ["run"], "accepts": list(accepts)})


@pytest.mark.parametrize(
    ("stage", "action", "reason"),
    [
        (ppo(), "force_checkpoint", "verl saves only every save_steps steps"),
        (ppo(), "rollback", "verl's stage does not roll back yet"),
        (declared(), "adjust_learning_rate", "its params.accepts declares what its program"),
        (declared(), "force_checkpoint", "(it takes cancel, pause, resume)"),
        (cmd("t"), "pause", "a command stage cannot take 'pause' (it takes cancel)"),
    ],
)
def test_an_action_the_stage_does_not_take_is_refused_on_the_record(stage, action, reason):
    w = running(stage)
    refused = refusal(w.send(request(action, factor=0.5)))
    assert refused.action == action and reason in refused.reason, refused.reason
    assert w.replayed_from_the_wire() == w.state


@pytest.mark.parametrize(
    ("stage", "action", "command"),
    [
        (ppo(), "adjust_learning_rate", AdjustLearningRate),
        (ppo(), "pause", PauseStage),
        (declared(), "pause", PauseStage),
    ],
)
def test_an_action_the_stage_takes_is_sent_to_the_agent(stage, action, command):
    w = running(stage)
    decision = w.send(request(action, factor=0.5))
    assert [e.type for e in decision.events] == ["ActionRequested"]
    [(_, sent)] = decision.commands
    assert isinstance(sent.data, command) and sent.data.action_id == "act-1"


def test_a_grpo_stage_on_trl_takes_every_action():
    stage = {
        "name": "t",
        "task": "train_model",
        "params": {"config": {"algorithm": "grpo", "model_path": "m"}},
    }
    w = running(stage)
    decision = w.send(request("force_checkpoint"))
    assert [e.type for e in decision.events] == ["ActionRequested"]


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        (ppo(), []),
        (ppo(backend="verl", algorithm="grpo", num_generations=8), []),
        (declared(), []),
        (
            ppo(lr_scheduler_type="cosine"),
            ["stage 't', field 'params.config.lr_scheduler_type': verl's backend does not read"],
        ),
        (
            ppo(verl_overrides=["trainer.default_local_dir=/x"]),
            ["stage 't', field 'params.config.verl_overrides': Value error, "],
        ),
        (
            {
                "name": "t",
                "task": "train_model",
                "params": {"config": {"algorithm": "sft", "model_path": "m", "verl_overrides": []}},
            },
            ["stage 't', field 'params.config.verl_overrides': read only by a stage on verl"],
        ),
        (ppo(gpus=0), ["stage 't', field 'resources.gpus': a stage on verl needs at least 1"]),
        (ppo(backend="trl"), ["stage 't', field 'params.config.backend': must be 'trl' or"]),
        (
            declared(accepts=["force_checkpoint"]),
            ["stage 't', field 'params.accepts': a list of the actions the program takes"],
        ),
        (
            ppo(train_data_path=None),
            ["stage 't', field 'params.config.train_data_path': "],
        ),
    ],
)
def test_the_validator_checks_verl_params_and_accepts(stage, expected):
    messages = errors_of([stage])
    assert len(messages) == len(expected), messages
    for message, start in zip(messages, expected, strict=True):
        assert message.startswith(start), message
