"""The task catalogue: every task a stage can name, and every parameter each one reads.

One place for what a stage may say. The DAG validator refuses a name that is not here (with the
nearest known name as a suggestion) instead of accepting it and letting the agent ignore it, and
refuses, with the reason, an option that is here but that no agent can carry out yet. The agent's
tasks read exactly these names (each task module's docstring describes them).

Params may be flat or under ``params.config`` (the seed's shape); ``config`` wins where both name
a key. Each task has a params model (pydantic, unknown keys refused): the validator reports its
errors field by field, and the agent's task reads its settings through the same model
(``task_params``), so a stage that validates is one the agent can read.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

# Read by the platform for every task, not by the task itself.
COMMON_PARAMS: frozenset[str] = frozenset(
    {
        "job_uuid",  # the seed's name for the stage's job id (metrics are stored under it)
        "config",  # the seed's nesting of a task's settings
    }
)


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


# --- the params model of each task ------------------------------------------------------------


class TaskParams(BaseModel):
    """The settings of a stage of one task (``merged_params``: flat or under ``config``, the
    platform's own keys left out). Unknown keys are refused; values keep their JSON types
    (strict: ``"3"`` is not a number). A ``ValueError`` raised here is the message the validator
    shows, under the field's name."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _one_of(choices: Iterable[str], value: Any, note: str = "") -> str:
    return f"must be one of {sorted(choices)}{note}, got {value!r}"


def _names(value: Any) -> Any:
    """One name may stand for a list of one (``reward_funcs: exact_match``)."""
    return [value] if isinstance(value, str) else value


def _strings(value: Any, message: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise ValueError(message)
    return value


ALGORITHMS: frozenset[str] = frozenset({"sft", "dpo", "grpo", "ppo"})
RUN_MODES: frozenset[str] = frozenset({"local", "ssh"})
BACKENDS: frozenset[str] = frozenset({"trl", "verl"})
# A number a user writes as an integer or a decimal (never a string, never a boolean).
Number = Annotated[float, Field(strict=False)]


class PreprocessParams(TaskParams):
    """``preprocess_dataset``: tokenise a JSONL file for the stages after it."""

    input_path: str | None = None
    model_path: str = "tiny-llama"
    output_dir: str | None = None
    max_rows: int | None = Field(None, ge=0)


class TrainParams(TaskParams):
    """``train_model`` on TRL (sft, dpo, grpo), and what every train_model stage may say; a
    stage on verl (``uses_verl``) is read by ``VerlParams`` as well."""

    algorithm: str = Field("", validate_default=True)
    model_path: str = Field("", validate_default=True)
    train_data_path: str | None = None
    eval_data_path: str | None = None
    num_epochs: Number | None = None
    max_steps: Number | None = None
    learning_rate: Number | None = None
    batch_size: int | None = Field(None, ge=1)
    gradient_accumulation_steps: int | None = Field(None, ge=1)
    lr_scheduler_type: str | None = None
    warmup_steps: int | None = Field(None, ge=0)
    max_grad_norm: Number | None = None
    seed: int | None = None
    save_steps: int | None = Field(None, ge=0)  # 0: no periodic checkpoints
    save_total_limit: int | None = Field(None, ge=1)
    max_length: int | None = Field(None, ge=1)
    kl_coef: Number | None = None
    beta: Number | None = None
    num_generations: int | None = Field(None, ge=1)
    max_completion_length: int | None = Field(None, ge=1)
    temperature: Number | None = None
    reward_funcs: list[str] | None = None
    num_threads: int | None = Field(None, ge=1)
    # Processes (ranks) of a CPU stage, torchrun's name; a GPU stage runs one per GPU.
    nproc_per_node: int | None = None
    trainer_args: dict[str, Any] | None = None
    callbacks: list[str | dict[str, Any]] | None = None
    resume: bool | None = None
    run_mode: str = "local"
    ssh_config: SshConfig | None = None
    backend: str | None = None
    verl_command: list[str] | None = None
    verl_overrides: list[str] | None = None

    @field_validator("algorithm", "run_mode", mode="before")
    @classmethod
    def _choice(cls, value: Any, info: ValidationInfo) -> Any:
        choices = ALGORITHMS if info.field_name == "algorithm" else RUN_MODES
        if value not in choices:
            raise ValueError(_one_of(choices, value))
        return value

    @field_validator("model_path", mode="before")
    @classmethod
    def _model_path(cls, value: Any) -> Any:
        if not isinstance(value, str) or not value:
            raise ValueError("a model directory or reference")
        return value

    @field_validator("num_epochs", "kl_coef", "learning_rate", "max_steps", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise ValueError("must be a number")
        return value

    @field_validator("nproc_per_node", mode="before")
    @classmethod
    def _ranks(cls, value: Any) -> Any:
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise ValueError(f"must be a positive integer, got {value!r}")
        return value

    @field_validator("backend", mode="before")
    @classmethod
    def _backend(cls, value: Any) -> Any:
        if value is not None and value not in BACKENDS:
            raise ValueError(f"must be 'trl' or 'verl' (ppo runs on verl only), got {value!r}")
        return value

    _reward_funcs = field_validator("reward_funcs", mode="before")(_names)

    @property
    def on_verl(self) -> bool:
        """Whether verl runs this stage (``uses_verl``)."""
        return self.algorithm == "ppo" or self.backend == "verl"


class EvaluationParams(TaskParams):
    """``run_evaluation``: score one or more models on an eval set."""

    model_path: str | None = None
    models: list[str] | None = None
    eval_data_path: str | None = None
    max_rows: int | None = Field(None, ge=0)
    batch_size: int | None = Field(None, ge=1)
    max_new_tokens: int | None = Field(None, ge=1)
    reward_funcs: list[str] | None = None

    _reward_funcs = field_validator("reward_funcs", mode="before")(_names)


# What a ``command`` stage may declare in ``accepts`` beyond cancel (actions.COMMAND_ACCEPTS).
CommandAccept = Literal["pause"]


class CommandParams(TaskParams):
    """``command``: any program (an external trainer such as verl), run in its own process
    group; it reports through its metrics file."""

    argv: list[str] = Field(default_factory=list, validate_default=True)
    env: dict[str, str | int | float | bool] = Field(default_factory=dict)
    cwd: str | None = None
    metrics_file: str | None = None
    checkpoint: str | None = None
    accepts: list[str] = Field(default_factory=list)

    @field_validator("argv", mode="before")
    @classmethod
    def _argv(cls, value: Any) -> Any:
        return _strings(value, "command needs a non-empty list of strings")

    @field_validator("accepts", mode="before")
    @classmethod
    def _accepts(cls, value: Any) -> Any:
        known = get_args(CommandAccept)
        if not isinstance(value, list) or not all(a in known for a in value):
            raise ValueError(
                "a list of the actions the program takes beyond cancel, among "
                f"{', '.join(sorted(known))}, got {value!r}"
            )
        return value


class PythonParams(TaskParams):
    """``python``: call ``module:function`` in the stage process with the stage's context."""

    entrypoint: str = Field("", validate_default=True)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("entrypoint", mode="before")
    @classmethod
    def _entrypoint(cls, value: Any) -> Any:
        if not isinstance(value, str) or value.count(":") != 1:
            raise ValueError("python needs 'module:function'")
        return value


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A task of the catalogue: its name and the model of its params."""

    name: str
    model: type[TaskParams]

    @property
    def params(self) -> frozenset[str]:
        """Every parameter the task reads."""
        return frozenset(self.model.model_fields)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("preprocess_dataset", PreprocessParams),
        TaskSpec("train_model", TrainParams),
        TaskSpec("run_evaluation", EvaluationParams),
        TaskSpec("command", CommandParams),
        TaskSpec("python", PythonParams),
    )
}


def task_params(task: str, params: Mapping[str, Any]) -> TaskParams:
    """A stage's params read by its task's model (flat or under ``config``); raises
    ``ValidationError`` naming each bad or unknown key, ``KeyError`` for an unknown task."""
    return TASKS[task].model.model_validate(merged_params(params))


def param_errors(task: str, params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(param, message) for each bad value of a stage's params, as its task's model (and, for a
    stage on verl, ``VerlParams``) sees them; unknown keys are left to the caller, which knows
    where each one was written. Empty when they are fine."""
    config = merged_params(params)
    out: dict[str, str] = {}
    try:
        TASKS[task].model.model_validate(config)
    except ValidationError as exc:
        out.update(_messages(exc))
    if task == "train_model" and uses_verl(config):
        # A verl stage reads fewer params than TRL's; each one it would ignore is refused.
        # ``backend`` is left to the caller: ppo with backend trl is a rule of two fields.
        for name, why in verl_param_errors(config):
            if name != "backend":
                out.setdefault(name, why)
    return list(out.items())


def _messages(exc: ValidationError) -> dict[str, str]:
    out: dict[str, str] = {}
    for err in exc.errors():
        if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
            continue  # an unknown param: the caller names it where it was written
        name = ".".join(str(p) for p in err["loc"]) or "(params)"
        custom = err.get("ctx", {}).get("error") if err["type"] == "value_error" else None
        out.setdefault(name, str(custom) if custom is not None else err["msg"])
    return out
