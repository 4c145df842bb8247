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
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    # Values a parameter may take that no agent can act on yet: param -> {value: why}.
    not_yet: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


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
    }
)

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "preprocess_dataset",
            frozenset({"input_path", "model_path", "output_dir", "max_rows"}),
        ),
        TaskSpec(
            "train_model",
            _TRAIN_PARAMS,
            not_yet={
                "algorithm": {
                    "ppo": "PPO is not built into train_model yet: run verl's PPO as a "
                    "'command' stage (its metrics file is tailed), see the trainer agent's README"
                },
                "run_mode": {
                    "ssh": "no agent runs stages over SSH yet: run an agent on the remote host, "
                    "or a 'command' stage that starts the run there"
                },
            },
        ),
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
        TaskSpec("command", frozenset({"argv", "env", "cwd", "metrics_file", "checkpoint"})),
        TaskSpec("python", frozenset({"entrypoint", "kwargs"})),
    )
}


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
