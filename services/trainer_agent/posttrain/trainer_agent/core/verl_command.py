"""verl's ``main_ppo`` command line for a train_model stage on verl: a pure function of the
stage's params (the catalogue's ``VerlParams``) and of where this launch stands.

verl is configured by Hydra overrides (``key=value``) on top of its ``ppo_trainer.yaml``; the
names used here are that file's (``trainer.*``, ``data.*``, ``algorithm.*``,
``actor_rollout_ref.*``, ``critic.*``). Its ``file`` logger writes one JSON line per step to
``VERL_FILE_LOGGER_PATH``; checkpoints go to ``trainer.default_local_dir/global_step_N``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from posttrain.events.tasks import VerlParams

# Values Hydra reads as they are; anything else is single-quoted (a comma would otherwise be a
# sweep, a space or a quote a grammar error).
_PLAIN = re.compile(r"[A-Za-z0-9_./@:+-]+")
PROJECT_NAME = "posttrain"
LOGGERS = '["console","file"]'
RUNTIME_ENV_FILE_LOGGER = "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH"


@dataclass(frozen=True, slots=True)
class Launch:
    """Where one launch of verl stands: what the platform decides, not the user."""

    checkpoint_dir: str
    experiment: str
    gpus: int
    learning_rate: float
    nnodes: int = 1
    resume_from: str | None = None  # a global_step_N directory, or None for a fresh start
    metrics_file: str | None = None  # where verl's ``file`` logger writes


def hydra_value(value: str | int | float | bool) -> str:
    """One override value in Hydra's grammar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if _PLAIN.fullmatch(value) and not _reads_as_other_type(value):
        return value
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _reads_as_other_type(text: str) -> bool:
    """Whether Hydra would read this string unquoted as a number, a bool or null."""
    if text.lower() in ("true", "false", "null", "nan", "inf", "-inf", "+inf"):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def overrides(params: VerlParams, launch: Launch) -> list[str]:
    """The Hydra overrides for one launch, in a stable order (the user's ``verl_overrides``
    last; the catalogue refuses those that name a key set here)."""
    ppo = params.algorithm == "ppo"
    items: dict[str, str | int | float | bool] = {
        "algorithm.adv_estimator": "gae" if ppo else "grpo",
        "data.train_files": params.train_data_path,
        # verl builds a validation set in any case: without one, validate on nothing.
        "data.val_files": params.eval_data_path or params.train_data_path,
        "actor_rollout_ref.model.path": params.model_path,
        "actor_rollout_ref.actor.optim.lr": launch.learning_rate,
    }
    if ppo:
        items["critic.model.path"] = params.model_path
    if params.batch_size is not None:
        items["data.train_batch_size"] = params.batch_size
    if params.num_generations is not None:
        items["actor_rollout_ref.rollout.n"] = params.num_generations
    if params.kl_coef is not None:
        if ppo:  # PPO: a KL penalty in the reward, with a fixed coefficient
            items["algorithm.use_kl_in_reward"] = True
            items["algorithm.kl_ctrl.kl_coef"] = params.kl_coef
        else:  # GRPO: a KL term in the actor's loss
            items["actor_rollout_ref.actor.use_kl_loss"] = True
            items["actor_rollout_ref.actor.kl_loss_coef"] = params.kl_coef
    items["trainer.total_epochs"] = params.num_epochs
    if params.max_steps is not None:
        items["trainer.total_training_steps"] = params.max_steps
    items["trainer.n_gpus_per_node"] = launch.gpus
    items["trainer.nnodes"] = launch.nnodes
    items["trainer.project_name"] = PROJECT_NAME
    items["trainer.experiment_name"] = launch.experiment
    items["trainer.default_local_dir"] = launch.checkpoint_dir
    items["trainer.save_freq"] = params.save_steps
    if params.eval_data_path is None:
        items["trainer.val_before_train"] = False
        items["trainer.test_freq"] = -1
    if launch.resume_from is None:
        items["trainer.resume_mode"] = "disable"
    else:
        items["trainer.resume_mode"] = "resume_path"
        items["trainer.resume_from_path"] = launch.resume_from
    rendered = [f"{key}={hydra_value(value)}" for key, value in items.items()]
    rendered.append(f"trainer.logger={LOGGERS}")
    if launch.metrics_file is not None:
        # verl's trainer, and so its file logger, runs in a Ray actor: the path goes in the Ray
        # job's environment too, so that it holds on a Ray cluster started beforehand.
        rendered.append(f"{RUNTIME_ENV_FILE_LOGGER}={hydra_value(launch.metrics_file)}")
    return [*rendered, *params.verl_overrides]


def command_line(params: VerlParams, launch: Launch) -> list[str]:
    """The argv of one launch: the configured program, then the overrides."""
    return [*params.verl_command, *overrides(params, launch)]


def environment(metrics_file: str) -> Mapping[str, str]:
    """What verl's ``file`` logger needs: the path it writes (opened with ``wb``: truncated)."""
    return {"VERL_FILE_LOGGER_PATH": metrics_file}
