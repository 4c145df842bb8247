"""verl's main_ppo command line, built from a stage's params: the exact argv."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from posttrain.events.tasks import verl_param_errors, verl_params
from posttrain.trainer_agent.core.verl_command import Launch, command_line, hydra_value
from posttrain.trainer_agent.tasks.verl import checkpoints_in

LAUNCH = Launch(
    checkpoint_dir="/w/jobs/job-1/verl-checkpoints",
    experiment="job-1",
    gpus=8,
    nnodes=2,
    learning_rate=1e-6,
)


def test_ppo_command_line_from_the_stage_config():
    params = verl_params(
        {
            "job_uuid": "job-1",  # the platform's own key: not verl's
            "algorithm": "ppo",
            "model_path": "/models/qwen2.5-0.5b",
            "train_data_path": "/data/gsm8k/train.parquet",
            "eval_data_path": "/data/gsm8k/test.parquet",
            "kl_coef": 0.001,
            "num_epochs": 3,
            "batch_size": 256,
            "save_steps": 20,
        }
    )
    assert command_line(params, LAUNCH) == [
        "python",
        "-m",
        "verl.trainer.main_ppo",
        "algorithm.adv_estimator=gae",
        "data.train_files=/data/gsm8k/train.parquet",
        "data.val_files=/data/gsm8k/test.parquet",
        "actor_rollout_ref.model.path=/models/qwen2.5-0.5b",
        "actor_rollout_ref.actor.optim.lr=1e-06",
        "critic.model.path=/models/qwen2.5-0.5b",
        "data.train_batch_size=256",
        "algorithm.use_kl_in_reward=true",
        "algorithm.kl_ctrl.kl_coef=0.001",
        "trainer.total_epochs=3",
        "trainer.n_gpus_per_node=8",
        "trainer.nnodes=2",
        "trainer.project_name=posttrain",
        "trainer.experiment_name=job-1",
        "trainer.default_local_dir=/w/jobs/job-1/verl-checkpoints",
        "trainer.save_freq=20",
        "trainer.resume_mode=disable",
        'trainer.logger=["console","file"]',
    ]


def test_grpo_resume_with_a_new_rate_and_overrides_passed_through():
    params = verl_params(
        {
            "algorithm": "grpo",
            "backend": "verl",
            "model_path": "m",
            "train_data_path": "/data/my train,v2.parquet",
            "kl_coef": 0.04,
            "num_generations": 8,
            "max_steps": 100,
            "verl_command": ["/venv/bin/python", "standin.py"],
            "verl_overrides": ["actor_rollout_ref.rollout.name=vllm", "+ray_kwargs.x=1"],
        }
    )
    launch = Launch(
        checkpoint_dir="/ck",
        experiment="j",
        gpus=1,
        learning_rate=5e-7,
        resume_from="/ck/global_step_40",
        metrics_file="/a/verl-metrics-1.jsonl",
    )
    assert command_line(params, launch) == [
        "/venv/bin/python",
        "standin.py",
        "algorithm.adv_estimator=grpo",
        "data.train_files='/data/my train,v2.parquet'",
        "data.val_files='/data/my train,v2.parquet'",
        "actor_rollout_ref.model.path=m",
        "actor_rollout_ref.actor.optim.lr=5e-07",
        "actor_rollout_ref.rollout.n=8",
        "actor_rollout_ref.actor.use_kl_loss=true",
        "actor_rollout_ref.actor.kl_loss_coef=0.04",
        "trainer.total_epochs=1",
        "trainer.total_training_steps=100",
        "trainer.n_gpus_per_node=1",
        "trainer.nnodes=1",
        "trainer.project_name=posttrain",
        "trainer.experiment_name=j",
        "trainer.default_local_dir=/ck",
        "trainer.save_freq=10",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.resume_mode=resume_path",
        "trainer.resume_from_path=/ck/global_step_40",
        'trainer.logger=["console","file"]',
        "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH=/a/verl-metrics-1.jsonl",
        "actor_rollout_ref.rollout.name=vllm",
        "+ray_kwargs.x=1",
    ]


def test_hydra_values_are_quoted_when_they_must_be():
    assert hydra_value("a/b-c_d.e") == "a/b-c_d.e"
    assert hydra_value("it's here") == "'it\\'s here'"
    assert hydra_value(True) == "true" and hydra_value(3) == "3"
    # A string Hydra would read as another type stays a string.
    assert hydra_value("123") == "'123'" and hydra_value("null") == "'null'"


@pytest.mark.parametrize(
    ("config", "field", "says"),
    [
        ({"lr_scheduler_type": "cosine"}, "lr_scheduler_type", "verl's backend does not read"),
        ({"learning_rate": -1}, "learning_rate", "greater than 0"),
        ({"verl_overrides": ["trainer.save_freq=5"]}, "verl_overrides", "set from the stage"),
        ({"verl_overrides": ["no_equals"]}, "verl_overrides", "not a Hydra override"),
        ({"num_epochs": "three"}, "num_epochs", "valid integer"),
    ],
)
def test_unknown_or_bad_params_are_refused_naming_the_key(config, field, says):
    base = {"algorithm": "ppo", "model_path": "m", "train_data_path": "t"}
    errors = verl_param_errors({**base, **config})
    assert [name.split(".")[0] for name, _ in errors] == [field], errors
    assert says in errors[0][1]
    with pytest.raises(ValidationError):
        verl_params({**base, **config})


def test_checkpoints_are_those_verl_finished_saving(tmp_path):
    assert checkpoints_in(tmp_path / "none") == []
    for step in (5, 10, 15):
        (tmp_path / f"global_step_{step}" / "actor").mkdir(parents=True)
    (tmp_path / "global_step_x").mkdir()
    assert checkpoints_in(tmp_path) == []  # no latest_checkpointed_iteration.txt yet
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("10")
    # global_step_15 is still being written: verl names it in the file once it is complete.
    assert [(c.step, c.path) for c in checkpoints_in(tmp_path)] == [
        (5, str(tmp_path / "global_step_5")),
        (10, str(tmp_path / "global_step_10")),
    ]
