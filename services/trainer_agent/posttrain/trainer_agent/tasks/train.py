"""``train_model``: SFT, DPO and GRPO with TRL's trainers, on any local HF model directory (or
the tiny model, ``model_path: tiny-llama``).

Config (``params.config``, SEED.md's names first): ``algorithm`` (sft | dpo | grpo),
``model_path``, ``train_data_path``, ``eval_data_path``, ``num_epochs``, ``max_steps``,
``learning_rate``, ``batch_size``, ``gradient_accumulation_steps``, ``lr_scheduler_type``,
``warmup_steps``, ``seed``, ``save_steps``, ``save_total_limit``, ``max_length``, ``kl_coef``
(DPO's and GRPO's beta), GRPO's ``num_generations``, ``max_completion_length``, ``temperature``
and ``reward_funcs`` (names in ``tasks.rewards`` or ``module:function``), ``num_threads``,
``trainer_args`` (any other TRL config field, passed through), and ``callbacks`` (more HF
``TrainerCallback``s: ``module:Name`` or ``{"entrypoint": "module:Name", "kwargs": {...}}``).
``nproc_per_node`` (ranks of a CPU stage) is read by the stage process, which runs this task
once per rank (``rank_launch``; a GPU stage runs one rank per GPU): the trainer does DDP.

Checkpoints: every ``save_steps`` steps (default 100; 0 turns periodic checkpoints off), the
last ``save_total_limit`` kept (default 3 when ``save_steps`` is defaulted), each with its
optimizer, scheduler and RNG state, so that a rollback has a checkpoint before the anomaly to go
back to and a resume continues exactly.

``ppo``: TRL 1.16 has no PPO trainer (it left ``trl.experimental``); PPO runs through the
``command`` task with verl, whose ``file`` logger the agent tails (see the package README).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from posttrain.events.tasks import TrainParams
from posttrain.trainer_agent.checkpoint_files import hf_checkpoints
from posttrain.trainer_agent.core.checkpoints import Checkpoint
from posttrain.trainer_agent.tasks.context import StageContext, StageError
from posttrain.trainer_agent.tasks.data import load_rows, text_columns
from posttrain.trainer_agent.tasks.rewards import resolve_reward
from posttrain.trainer_agent.tiny import resolve_model_path

# Periodic checkpoints by default, so that a rollback (the default remedy for a loss spike) has
# one before the spike to go back to; the last few are kept.
DEFAULT_SAVE_STEPS = 100
DEFAULT_SAVE_TOTAL_LIMIT = 3
V = TypeVar("V")
PPO_MESSAGE = (
    "algorithm 'ppo': TRL 1.16 ships no PPO trainer; run PPO through the `command` task with "
    "verl (template in services/trainer_agent/README.md): the agent tails verl's file logger"
)


def train_model(ctx: StageContext) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer, set_seed

    from posttrain.trainer_agent.hf_callback import PosttrainCallback

    params = ctx.read_params(TrainParams)
    algorithm = params.algorithm  # one of the catalogue's, as its model checked
    if algorithm == "ppo":
        raise StageError(PPO_MESSAGE)
    if params.num_threads is not None:
        torch.set_num_threads(params.num_threads)
    model_path = resolve_model_path(params.model_path, ctx.models_dir)
    seed = params.seed or 0
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_data_path = ctx.required("train_data_path", params.train_data_path)
    train = text_columns(load_rows(train_data_path, what="train_data_path"))
    evaluation = (
        text_columns(load_rows(params.eval_data_path, what="eval_data_path"))
        if params.eval_data_path
        else None
    )
    output_dir = ctx.job_dir / "checkpoints"
    callback = PosttrainCallback(ctx.reporter, stage=ctx)
    args = _common_args(params, output_dir, seed, has_eval=evaluation is not None)
    callbacks = [callback, *_extra_callbacks(params.callbacks)]
    trainer = _trainer(params, model_path, tokenizer, train, evaluation, args, callbacks)
    callback.attach(trainer)

    resume = ctx.resume_from or _retry_checkpoint(ctx, output_dir, params)
    ctx.checkpoints = _line_so_far(output_dir, resume)
    trainer.train(resume_from_checkpoint=resume)
    steps = int(trainer.state.global_step)
    summary = {**_numbers(callback.last_logs), **callback.summary, "steps": steps}
    if ctx.stop_reason is not None:
        return {
            "stopped": ctx.stop_reason,
            "step": steps,
            "checkpoint": ctx.last_checkpoint,
            "metrics": summary,
        }
    final = ctx.job_dir / "final"
    trainer.save_model(str(final))  # by rank 0 only, in a multi-rank stage
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(final))
    return {
        "checkpoint": str(final),
        "algorithm": algorithm,
        "steps": steps,
        "resumed_from": resume,
        "metrics": summary,
    }


def _common_args(
    params: TrainParams, output_dir: Path, seed: int, *, has_eval: bool
) -> dict[str, Any]:
    import torch

    save_steps = DEFAULT_SAVE_STEPS if params.save_steps is None else params.save_steps
    save_total_limit = params.save_total_limit or (
        DEFAULT_SAVE_TOTAL_LIMIT if params.save_steps is None else None
    )
    args: dict[str, Any] = {
        "output_dir": str(output_dir),
        "seed": seed,
        "num_train_epochs": _or(params.num_epochs, 1.0),
        "max_steps": int(_or(params.max_steps, -1)),
        "learning_rate": _or(params.learning_rate, 5e-5),
        "per_device_train_batch_size": _or(params.batch_size, 8),
        "gradient_accumulation_steps": _or(params.gradient_accumulation_steps, 1),
        "lr_scheduler_type": params.lr_scheduler_type or "linear",
        "warmup_steps": _or(params.warmup_steps, 0),
        # Every step reaches the platform, and a NaN loss is never averaged away.
        "logging_steps": 1,
        "logging_nan_inf_filter": False,
        # Checkpoints keep the optimizer, scheduler and RNG state so that a resume or a rollback
        # continues exactly; the agent forces the ones that control commands ask for.
        "save_strategy": "steps" if save_steps else "no",
        "save_steps": save_steps or 500,
        "save_total_limit": save_total_limit,
        "report_to": [],
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "use_cpu": not torch.cuda.is_available(),
        "eval_strategy": "epoch" if has_eval else "no",
    }
    if params.max_grad_norm is not None:
        args["max_grad_norm"] = params.max_grad_norm
    args.update(params.trainer_args or {})
    return args


def _or(value: V | None, default: V) -> V:
    """A param's value, or the task's default where the stage leaves it out (0 is a value)."""
    return default if value is None else value


def _trainer(
    params: TrainParams,
    model_path: str,
    tokenizer: Any,
    train: Any,
    evaluation: Any,
    args: dict[str, Any],
    callbacks: list[Any],
) -> Any:
    algorithm = params.algorithm
    max_length = _or(params.max_length, 1024)
    if algorithm == "sft":
        from trl.trainer.sft_config import SFTConfig
        from trl.trainer.sft_trainer import SFTTrainer

        return SFTTrainer(
            model=model_path,
            args=SFTConfig(max_length=max_length, **args),
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=tokenizer,
            callbacks=callbacks,
        )
    if algorithm == "dpo":
        from trl.trainer.dpo_config import DPOConfig
        from trl.trainer.dpo_trainer import DPOTrainer

        beta = _or(params.kl_coef, _or(params.beta, 0.1))
        return DPOTrainer(
            model=model_path,
            args=DPOConfig(beta=beta, max_length=max_length, **args),
            train_dataset=preference_pairs(train, seed=int(args["seed"])),
            eval_dataset=preference_pairs(evaluation, seed=int(args["seed"]))
            if evaluation is not None
            else None,
            processing_class=tokenizer,
            callbacks=callbacks,
        )
    from trl.trainer.grpo_config import GRPOConfig
    from trl.trainer.grpo_trainer import GRPOTrainer

    names = params.reward_funcs or ["exact_match"]
    return GRPOTrainer(
        model=model_path,
        reward_funcs=[resolve_reward(n) for n in names],  # type: ignore[misc]
        args=GRPOConfig(
            beta=_or(params.kl_coef, 0.0),
            num_generations=_or(params.num_generations, 8),
            max_completion_length=_or(params.max_completion_length, 64),
            temperature=_or(params.temperature, 1.0),
            **args,
        ),
        train_dataset=prompts_with_answers(train),
        eval_dataset=prompts_with_answers(evaluation) if evaluation is not None else None,
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def preference_pairs(dataset: Any, *, seed: int) -> Any:
    """DPO needs prompt/chosen/rejected. A prompt/completion dataset becomes pairs whose
    rejected answer is another row's completion (a different one), chosen deterministically."""
    columns = set(dataset.column_names)
    if {"chosen", "rejected"} <= columns:
        return dataset
    if not {"prompt", "completion"} <= columns:
        raise StageError(
            "DPO needs prompt/chosen/rejected columns, or prompt/completion to derive pairs from; "
            f"got {sorted(columns)}"
        )
    import random

    completions = list(dataset["completion"])
    rng = random.Random(seed)

    def pair(row: dict[str, Any], index: int) -> dict[str, Any]:
        for _ in range(20):
            other = completions[rng.randrange(len(completions))]
            if other != row["completion"]:
                break
        return {"prompt": row["prompt"], "chosen": row["completion"], "rejected": other}

    return dataset.map(pair, with_indices=True, remove_columns=dataset.column_names)


def prompts_with_answers(dataset: Any) -> Any:
    """GRPO samples its own completions: a reference completion becomes the ``answer`` column
    that verifiable rewards check."""
    if "prompt" not in dataset.column_names:
        raise StageError(f"GRPO needs a 'prompt' column; got {dataset.column_names}")
    if "completion" in dataset.column_names and "answer" not in dataset.column_names:
        dataset = dataset.rename_column("completion", "answer")
    return dataset


def _retry_checkpoint(ctx: StageContext, output_dir: Path, params: TrainParams) -> str | None:
    """A retry (attempt > 1) resumes from the job's latest checkpoint whose weights are finite
    unless told otherwise."""
    if ctx.run.attempt <= 1 or params.resume is False:
        return None
    good = [c for c in hf_checkpoints(output_dir) if not c.poisoned]
    return good[-1].path if good else None


def _line_so_far(output_dir: Path, resume: str | None) -> list[Checkpoint]:
    """The checkpoints of the line this launch continues: those on disk up to the one it
    resumes from (none when it starts afresh). A rollback may go back to them."""
    if resume is None:
        return []
    name = Path(resume).name
    at = int(name.removeprefix("checkpoint-")) if name.removeprefix("checkpoint-").isdigit() else 0
    return [c for c in hf_checkpoints(output_dir) if c.step <= at]


def _extra_callbacks(specs: Any) -> list[Any]:
    """The user's own HF callbacks: ``module:Name`` (called with no arguments) or
    ``{"entrypoint": "module:Name", "kwargs": {...}}``."""
    import importlib

    if specs is None:
        return []
    if not isinstance(specs, list):
        raise StageError("params.config.callbacks must be a list of 'module:Name' or mappings")
    out = []
    for spec in specs:
        entry, kwargs = (spec, {}) if isinstance(spec, str) else _callback_spec(spec)
        module, sep, attr = entry.partition(":")
        factory = getattr(importlib.import_module(module), attr, None) if sep else None
        if not callable(factory):
            raise StageError(f"params.config.callbacks: {entry!r} is not a 'module:Name' callable")
        out.append(factory(**kwargs))
    return out


def _callback_spec(spec: Any) -> tuple[str, dict[str, Any]]:
    if (
        not isinstance(spec, dict)
        or not isinstance(spec.get("entrypoint"), str)
        or not isinstance(spec.get("kwargs", {}), dict)
    ):
        raise StageError(
            "params.config.callbacks: each entry is 'module:Name' or "
            f"{{'entrypoint': 'module:Name', 'kwargs': {{...}}}}, got {spec!r}"
        )
    return spec["entrypoint"], dict(spec.get("kwargs", {}))


def _numbers(logs: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in logs.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
