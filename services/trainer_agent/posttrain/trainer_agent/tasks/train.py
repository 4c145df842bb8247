"""``train_model``: SFT, DPO and GRPO with TRL's trainers, on any local HF model directory (or
the tiny model, ``model_path: tiny-llama``).

Config (``params.config``, SEED.md's names first): ``algorithm`` (sft | dpo | grpo),
``model_path``, ``train_data_path``, ``eval_data_path``, ``num_epochs``, ``max_steps``,
``learning_rate``, ``batch_size``, ``gradient_accumulation_steps``, ``lr_scheduler_type``,
``warmup_steps``, ``seed``, ``save_steps``, ``save_total_limit``, ``max_length``, ``kl_coef``
(DPO's and GRPO's beta), GRPO's ``num_generations``, ``max_completion_length``, ``temperature``
and ``reward_funcs`` (names in ``tasks.rewards`` or ``module:function``), ``num_threads``, and
``trainer_args`` (any other TRL config field, passed through).

``ppo``: TRL 1.16 has no PPO trainer (it left ``trl.experimental``); PPO runs through the
``command`` task with verl, whose ``file`` logger the agent tails (see the package README).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from posttrain.trainer_agent.tasks.context import StageContext, StageError
from posttrain.trainer_agent.tasks.data import load_rows, text_columns
from posttrain.trainer_agent.tasks.rewards import resolve_reward
from posttrain.trainer_agent.tiny import resolve_model_path

ALGORITHMS = ("sft", "dpo", "grpo")
PPO_MESSAGE = (
    "algorithm 'ppo': TRL 1.16 ships no PPO trainer; run PPO through the `command` task with "
    "verl (template in services/trainer_agent/README.md): the agent tails verl's file logger"
)


def train_model(ctx: StageContext) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer, set_seed

    from posttrain.trainer_agent.hf_callback import PosttrainCallback

    cfg = ctx.config
    algorithm = str(cfg.get("algorithm", "sft")).lower()
    if algorithm == "ppo":
        raise StageError(PPO_MESSAGE)
    if algorithm not in ALGORITHMS:
        raise StageError(f"params.config.algorithm {algorithm!r}: expected one of {ALGORITHMS}")
    if isinstance(cfg.get("num_threads"), int):
        torch.set_num_threads(cfg["num_threads"])
    model_path = resolve_model_path(ctx.require("model_path"), ctx.models_dir)
    seed = int(cfg.get("seed", 0))
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train = text_columns(load_rows(ctx.require("train_data_path"), what="train_data_path"))
    evaluation = (
        text_columns(load_rows(cfg["eval_data_path"], what="eval_data_path"))
        if cfg.get("eval_data_path")
        else None
    )
    output_dir = ctx.job_dir / "checkpoints"
    callback = PosttrainCallback(ctx.reporter, stage=ctx)
    args = _common_args(cfg, output_dir, seed, has_eval=evaluation is not None)
    trainer = _trainer(algorithm, cfg, model_path, tokenizer, train, evaluation, args, callback)

    resume = ctx.resume_from or _retry_checkpoint(ctx, output_dir)
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
    trainer.save_model(str(final))
    tokenizer.save_pretrained(str(final))
    return {
        "checkpoint": str(final),
        "algorithm": algorithm,
        "steps": steps,
        "resumed_from": resume,
        "metrics": summary,
    }


def _common_args(
    cfg: dict[str, Any], output_dir: Path, seed: int, *, has_eval: bool
) -> dict[str, Any]:
    import torch

    save_steps = cfg.get("save_steps")
    args: dict[str, Any] = {
        "output_dir": str(output_dir),
        "seed": seed,
        "num_train_epochs": float(cfg.get("num_epochs", 1)),
        "max_steps": int(cfg.get("max_steps", -1)),
        "learning_rate": float(cfg.get("learning_rate", 5e-5)),
        "per_device_train_batch_size": int(cfg.get("batch_size", 8)),
        "gradient_accumulation_steps": int(cfg.get("gradient_accumulation_steps", 1)),
        "lr_scheduler_type": str(cfg.get("lr_scheduler_type", "linear")),
        "warmup_steps": int(cfg.get("warmup_steps", 0)),
        # Every step reaches the platform, and a NaN loss is never averaged away.
        "logging_steps": 1,
        "logging_nan_inf_filter": False,
        # Checkpoints keep the optimizer and scheduler so that a resume continues exactly; the
        # agent forces the ones that control commands ask for.
        "save_strategy": "steps" if save_steps else "no",
        "save_steps": int(save_steps) if save_steps else 500,
        "save_total_limit": cfg.get("save_total_limit"),
        "report_to": [],
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "use_cpu": not torch.cuda.is_available(),
        "eval_strategy": "epoch" if has_eval else "no",
    }
    if "max_grad_norm" in cfg:
        args["max_grad_norm"] = float(cfg["max_grad_norm"])
    passthrough = cfg.get("trainer_args") or {}
    if not isinstance(passthrough, dict):
        raise StageError("params.config.trainer_args must be a mapping of TRL config fields")
    args.update(passthrough)
    return args


def _trainer(
    algorithm: str,
    cfg: dict[str, Any],
    model_path: str,
    tokenizer: Any,
    train: Any,
    evaluation: Any,
    args: dict[str, Any],
    callback: Any,
) -> Any:
    if algorithm == "sft":
        from trl.trainer.sft_config import SFTConfig
        from trl.trainer.sft_trainer import SFTTrainer

        return SFTTrainer(
            model=model_path,
            args=SFTConfig(max_length=int(cfg.get("max_length", 1024)), **args),
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=tokenizer,
            callbacks=[callback],
        )
    if algorithm == "dpo":
        from trl.trainer.dpo_config import DPOConfig
        from trl.trainer.dpo_trainer import DPOTrainer

        beta = float(cfg.get("kl_coef", cfg.get("beta", 0.1)))
        return DPOTrainer(
            model=model_path,
            args=DPOConfig(beta=beta, max_length=int(cfg.get("max_length", 1024)), **args),
            train_dataset=preference_pairs(train, seed=int(args["seed"])),
            eval_dataset=preference_pairs(evaluation, seed=int(args["seed"]))
            if evaluation is not None
            else None,
            processing_class=tokenizer,
            callbacks=[callback],
        )
    from trl.trainer.grpo_config import GRPOConfig
    from trl.trainer.grpo_trainer import GRPOTrainer

    names = cfg.get("reward_funcs") or ["exact_match"]
    if isinstance(names, str):
        names = [names]
    generations = int(cfg.get("num_generations", 8))
    return GRPOTrainer(
        model=model_path,
        reward_funcs=[resolve_reward(str(n)) for n in names],  # type: ignore[misc]
        args=GRPOConfig(
            beta=float(cfg.get("kl_coef", 0.0)),
            num_generations=generations,
            max_completion_length=int(cfg.get("max_completion_length", 64)),
            temperature=float(cfg.get("temperature", 1.0)),
            **args,
        ),
        train_dataset=prompts_with_answers(train),
        eval_dataset=prompts_with_answers(evaluation) if evaluation is not None else None,
        processing_class=tokenizer,
        callbacks=[callback],
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


def _retry_checkpoint(ctx: StageContext, output_dir: Path) -> str | None:
    """A retry (attempt > 1) resumes from the job's latest checkpoint unless told otherwise."""
    if ctx.run.attempt <= 1 or ctx.config.get("resume") is False:
        return None
    checkpoints = sorted(
        (p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    return str(checkpoints[-1]) if checkpoints else None


def _numbers(logs: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in logs.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
