"""The task catalogue: every task a stage can name, and every parameter each one reads.

One place for what a stage may say. The DAG validator refuses a name that is not here (with the
nearest known name as a suggestion) instead of accepting it and letting the agent ignore it, and
refuses, with the reason, an option that is here but that no agent can carry out yet. The agent's
tasks read exactly these names (each task module's docstring describes them).

Params may be flat or under ``params.config`` (the seed's shape); ``config`` wins where both name
a key.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Read by the platform for every task, not by the task itself.
COMMON_PARAMS: frozenset[str] = frozenset(
    {
        "job_uuid",  # the seed's name for the stage's job id (metrics are stored under it)
        "config",  # the seed's nesting of a task's settings
    }
)


@dataclass(frozen=True, slots=True)
class TaskSpec:
    name: str
    params: frozenset[str]


_TRAIN_PARAMS = frozenset(
    {
        "algorithm",
        "model_path",
        "train_data_path",
        "eval_data_path",
        "num_epochs",
        "max_steps",
        "learning_rate",
        "batch_size",
        "gradient_accumulation_steps",
        "lr_scheduler_type",
        "warmup_steps",
        "max_grad_norm",
        "seed",
        "save_steps",
        "save_total_limit",
        "max_length",
        "kl_coef",
        "beta",
        "num_generations",
        "max_completion_length",
        "temperature",
        "reward_funcs",
        "num_threads",
        # Processes (ranks) of a CPU stage, torchrun's name; a GPU stage runs one per GPU.
        "nproc_per_node",
        "trainer_args",
        "callbacks",
        "resume",
        "run_mode",
        "ssh_config",
        "backend",
        "verl_command",
        "verl_overrides",
    }
)

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "preprocess_dataset",
            frozenset({"input_path", "model_path", "output_dir", "max_rows"}),
        ),
        TaskSpec("train_model", _TRAIN_PARAMS),
        TaskSpec(
            "run_evaluation",
            frozenset(
                {
                    "model_path",
                    "models",
                    "eval_data_path",
                    "max_rows",
                    "batch_size",
                    "max_new_tokens",
                    "reward_funcs",
                }
            ),
        ),
        TaskSpec(
            "command",
            frozenset({"argv", "env", "cwd", "metrics_file", "checkpoint", "accepts"}),
        ),
        TaskSpec("python", frozenset({"entrypoint", "kwargs"})),
    )
}


# --- train_model on verl ------------------------------------------------------------------

# Hydra keys the platform sets itself on a verl run: a ``verl_overrides`` entry may not name them
# (the stage's own params say these things, and the agent relies on them to tail, save, resume).
VERL_OWNED_KEYS: frozenset[str] = frozenset(
    {
        "trainer.logger",
        "trainer.default_local_dir",
        "trainer.resume_mode",
        "trainer.resume_from_path",
        "trainer.n_gpus_per_node",
        "trainer.nnodes",
        "trainer.save_freq",
        "trainer.total_epochs",
        "trainer.total_training_steps",
        "trainer.experiment_name",
        "actor_rollout_ref.actor.optim.lr",
        "actor_rollout_ref.model.path",
        "data.train_files",
        "data.val_files",
        "ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH",
    }
)


class VerlParams(BaseModel):
    """What a ``train_model`` stage run by verl reads (``algorithm: ppo``, or ``grpo`` with
    ``backend: verl``): a subset of train_model's params, each mapped onto verl's ``main_ppo``
    config. Any other key is refused: verl would not read it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    algorithm: Literal["ppo", "grpo"]
    backend: Literal["verl"] = "verl"
    model_path: str = Field(min_length=1)
    train_data_path: str = Field(min_length=1)
    eval_data_path: str | None = None
    num_epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    learning_rate: float = Field(1e-6, gt=0)
    kl_coef: float | None = Field(None, ge=0)
    batch_size: int | None = Field(None, ge=1)
    num_generations: int | None = Field(None, ge=1)
    # verl saves every ``save_freq`` steps: what a pause or a learning-rate change goes back to.
    save_steps: int = Field(10, ge=1)
    # The program to run (argv prefix): verl by default; tests point it at a stand-in.
    verl_command: list[str] = Field(
        default_factory=lambda: ["python", "-m", "verl.trainer.main_ppo"], min_length=1
    )
    # More Hydra overrides (``key=value``) passed through, as ``trainer_args`` is for TRL.
    verl_overrides: list[str] = Field(default_factory=list)

    @field_validator("verl_overrides")
    @classmethod
    def _overrides(cls, value: list[str]) -> list[str]:
        for item in value:
            key = item.split("=", 1)[0].lstrip("+~")
            if "=" not in item or not key:
                raise ValueError(f"{item!r} is not a Hydra override (key=value)")
            if key in VERL_OWNED_KEYS:
                raise ValueError(f"{key} is set from the stage's params, not an override")
        return value


def stage_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """A stage's settings: the seed's stages put them under ``params.config``, flat params work
    too; ``config`` wins where both name a key. The one reading, for the validator and the
    agent alike."""
    merged = {k: v for k, v in params.items() if k != "config"}
    nested = params.get("config")
    if isinstance(nested, Mapping):
        merged.update(nested)
    return merged


def merged_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``stage_config`` with the platform's own keys left out."""
    return {k: v for k, v in stage_config(params).items() if k not in COMMON_PARAMS}


def uses_verl(config: Mapping[str, Any]) -> bool:
    """Whether a train_model stage with these (merged) params runs on verl: PPO always does
    (TRL ships no PPO trainer), GRPO when ``backend: verl`` says so."""
    return config.get("algorithm") == "ppo" or config.get("backend") == "verl"


def verl_params(config: Mapping[str, Any]) -> VerlParams:
    """The verl params of a stage's merged config (the platform's own keys left out); raises
    ``ValidationError`` naming each bad or unknown key."""
    return VerlParams.model_validate({k: v for k, v in config.items() if k not in COMMON_PARAMS})


def verl_param_errors(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(param, message) for each problem of a verl stage's params; empty when they are fine."""
    try:
        verl_params(config)
    except ValidationError as exc:
        out: list[tuple[str, str]] = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "(params)"
            message = (
                "verl's backend does not read this key; it reads "
                + ", ".join(sorted(VerlParams.model_fields))
                if err["type"] == "extra_forbidden"
                else err["msg"]
            )
            out.append((name, message))
        return out
    return []


def suggestion(name: str, known: Iterable[str]) -> str:
    """' (did you mean "x"?)' for the nearest known name, or nothing when none is near."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SshConfig(BaseModel):
    """``ssh_config`` of a ``run_mode: ssh`` stage: where and how the agent reaches the remote
    host. It names credentials, never holds them: ``key_secret`` is the name of a private key
    that the agent resolves on its own host (a file in its secrets directory, or an environment
    variable), so no key or password is ever in a pipeline, an event, a log or the read model.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1, description="host name or address of the remote host")
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(min_length=1)
    key_secret: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="name of the private key secret the agent resolves locally",
    )
    agent: bool = Field(
        default=False, description="authenticate with the agent host's ssh-agent (SSH_AUTH_SOCK)"
    )
    remote_dir: str = Field(
        min_length=1, description="remote working directory; each run gets a folder under it"
    )
    env: dict[str, str] = Field(default_factory=dict, description="remote environment")
    python: str = Field(
        default="python3",
        min_length=1,
        description="the remote Python that has posttrain's trainer agent installed (a stage "
        "runs there as python -m posttrain.trainer_agent.stage_process)",
    )
    known_hosts: Literal["strict", "accept_new"] = Field(
        default="strict",
        description="strict: the host must be in known_hosts with the key it shows; "
        "accept_new: an unknown host's key is recorded on first contact (a changed key is "
        "still refused)",
    )
    known_hosts_file: str | None = Field(
        default=None, description="known_hosts on the agent host (default ~/.ssh/known_hosts)"
    )

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        bad = [name for name in env if not _ENV_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"not environment variable names: {sorted(bad)}")
        return env

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> SshConfig:
        if (self.key_secret is None) == (not self.agent):
            raise ValueError("name exactly one of key_secret or agent: true")
        return self
