"""``run_evaluation``: loss, accuracy and reward of one or more models on an eval set.

Config: ``model_path`` or ``models`` (a list, e.g. several stages' checkpoints),
``eval_data_path``, ``max_rows``, ``batch_size``, ``max_new_tokens``, ``reward_funcs``.

- ``eval_loss``: mean token NLL of the completion given the prompt (or of ``text``);
- ``eval_accuracy``: greedy generation equal to the reference (``answer`` or ``completion``);
- ``reward_mean``: the named rewards (``tasks.rewards``) of the greedy generations.

Each model's figures are a metric point (step = its index) and the stage's outputs.
"""

from __future__ import annotations

import math
from typing import Any

from posttrain.events.tasks import EvaluationParams
from posttrain.trainer_agent.core.control import StepDirective
from posttrain.trainer_agent.tasks.context import StageContext, StageError
from posttrain.trainer_agent.tasks.data import load_rows, text_columns
from posttrain.trainer_agent.tasks.rewards import resolve_reward
from posttrain.trainer_agent.tiny import resolve_model_path


def run_evaluation(ctx: StageContext) -> dict[str, Any]:
    params = ctx.read_params(EvaluationParams)
    models = params.models or ([params.model_path] if params.model_path else [])
    if not models:
        raise StageError("run_evaluation needs params.config.model_path or a list in models")
    eval_data_path = ctx.required("eval_data_path", params.eval_data_path)
    rows = text_columns(load_rows(eval_data_path, what="eval_data_path"))
    if params.max_rows is not None:
        rows = rows.select(range(min(params.max_rows, len(rows))))
    rewards = [resolve_reward(name) for name in params.reward_funcs or []]
    results = []
    for index, model in enumerate(models):
        directive: StepDirective = ctx.poll_control(index)
        if directive.stop == "cancel":
            ctx.stopping("cancel", index)
            for applied in directive.applied:
                if applied.action == "cancel":
                    ctx.action_applied(applied, index)
            return {"stopped": "cancel", "step": index}
        path = resolve_model_path(str(model), ctx.models_dir)
        figures = evaluate_model(path, rows, rewards, params)
        ctx.reporter(step=index, **figures, model=path)
        results.append({"model": path, **figures})
    best = max(results, key=_rank)
    return {
        "results": results,
        "best_model": best["model"],
        **{k: v for k, v in results[0].items() if k != "model"},
    }


def _rank(result: dict[str, Any]) -> tuple[float, float]:
    """Higher accuracy first, then lower loss."""
    return (float(result.get("eval_accuracy", -1.0)), -float(result.get("eval_loss", math.inf)))


def evaluate_model(
    path: str, rows: Any, rewards: list[Any], params: EvaluationParams
) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path)
    model.eval()  # type: ignore[no-untyped-call]
    batch_size = params.batch_size or 32
    columns = set(rows.column_names)
    reference = next((c for c in ("answer", "completion") if c in columns), None)
    figures: dict[str, float] = {}
    total_nll, total_tokens, correct, reward_sum, generated = 0.0, 0, 0, 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            nll, tokens = _nll(model, tokenizer, batch)
            total_nll += nll
            total_tokens += tokens
            if "prompt" in batch and reference is not None:
                texts = _generate(model, tokenizer, batch["prompt"], params)
                answers = [str(a).strip() for a in batch[reference]]
                correct += sum(t.strip() == a for t, a in zip(texts, answers, strict=True))
                generated += len(texts)
                for fn in rewards:
                    reward_sum += sum(fn(texts, **batch)) / len(rewards)
    if total_tokens:
        figures["eval_loss"] = total_nll / total_tokens
    if generated:
        figures["eval_accuracy"] = correct / generated
        if rewards:
            figures["reward_mean"] = reward_sum / generated
    return figures


def _nll(model: Any, tokenizer: Any, batch: dict[str, list[Any]]) -> tuple[float, int]:
    """Summed NLL of the scored tokens (completion + EOS, or all of ``text``) and their count."""
    import torch

    if "prompt" in batch and "completion" in batch:
        prefixes, targets = batch["prompt"], batch["completion"]
    elif "text" in batch:
        prefixes, targets = [""] * len(batch["text"]), batch["text"]
    else:
        return 0.0, 0
    total, count = 0.0, 0
    for prefix, target in zip(prefixes, targets, strict=True):
        head = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        body = tokenizer(str(target), add_special_tokens=False)["input_ids"]
        body = [*body, tokenizer.eos_token_id]
        ids = torch.tensor([head + body])
        labels = torch.tensor([[-100] * len(head) + body])
        out = model(input_ids=ids, labels=labels)
        total += float(out.loss) * len(body)
        count += len(body)
    return total, count


def _generate(
    model: Any, tokenizer: Any, prompts: list[str], params: EvaluationParams
) -> list[str]:
    tokenizer.padding_side = "left"
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(
        **encoded,
        max_new_tokens=params.max_new_tokens or 8,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    decoded: list[str] = tokenizer.batch_decode(
        out[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True
    )
    return decoded
