"""Record the metric series of healthy tiny runs (TRL SFT, then GRPO from the SFT model) as the
platform's canonical fields, for the "healthy runs raise nothing" tests.

    python -m tests.unit.diagnostics.data.record_runs   # writes sft_tiny.json, grpo_tiny.json

The model (Llama architecture, hidden 64, 2 layers), the character-level tokenizer and the task
(single-digit addition) are the ones DESIGN.md describes; nothing is downloaded. Keys are mapped
as METRICS.md's table says (TRL column); everything else is kept under ``custom``.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
TRL_TO_CANONICAL = {
    "loss": "loss",
    "grad_norm": "grad_norm",
    "learning_rate": "learning_rate",
    "reward": "reward_mean",
    "reward_std": "reward_std",
    "kl": "kl_divergence",
    "entropy": "entropy",
    "completions/mean_length": "response_length_mean",
    "clip_ratio/region_mean": "clip_frac",
}


def to_point(step: int, logs: dict[str, float]) -> dict[str, object]:
    point: dict[str, object] = {"step": step, "timestamp": float(step), "custom": {}}
    for key, value in logs.items():
        if not isinstance(value, int | float):
            continue
        value = float(value)
        canonical = TRL_TO_CANONICAL.get(key)
        stored: object = value if math.isfinite(value) else str(value)
        if canonical:
            point[canonical] = stored
        else:
            point["custom"][key] = stored  # type: ignore[index]
    return point


def main() -> None:
    import torch
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        TrainerCallback,
    )
    from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

    torch.manual_seed(0)
    random.seed(0)
    chars = list("0123456789+=")
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>"
    )
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    model = LlamaForCausalLM(config)
    pairs = [(a, b) for a in range(10) for b in range(10) if a + b < 10]
    sft_rows = [
        {"prompt": f"{a}+{b}=", "completion": f"{a + b}"} for a, b in pairs for _ in range(20)
    ]
    random.shuffle(sft_rows)

    class Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.points: list[dict[str, object]] = []

        def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
            if logs and any(k in logs for k in ("loss", "reward")):
                self.points.append(to_point(state.global_step, logs))

    out = Path(tempfile.mkdtemp(prefix="record-runs-"))
    sft_rec = Recorder()
    sft = SFTTrainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list(sft_rows),
        args=SFTConfig(
            output_dir=str(out / "sft"),
            per_device_train_batch_size=32,
            max_steps=100,
            learning_rate=3e-3,
            logging_steps=1,
            logging_nan_inf_filter=False,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=0,
        ),
        callbacks=[sft_rec],
    )
    sft.train()
    (HERE / "sft_tiny.json").write_text(json.dumps(sft_rec.points))
    sft.save_model(str(out / "sft-model"))
    tokenizer.save_pretrained(str(out / "sft-model"))

    def correct(completions: list[str], prompts: list[str], **_: object) -> list[float]:
        rewards = []
        for prompt, completion in zip(prompts, completions, strict=True):
            a, b = int(prompt[0]), int(prompt[2])
            rewards.append(1.0 if completion.strip().startswith(str(a + b)) else 0.0)
        return rewards

    grpo_rows = [{"prompt": f"{a}+{b}="} for a, b in pairs for _ in range(10)]
    random.shuffle(grpo_rows)
    grpo_rec = Recorder()
    grpo = GRPOTrainer(
        model=str(out / "sft-model"),
        reward_funcs=correct,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list(grpo_rows),
        args=GRPOConfig(
            output_dir=str(out / "grpo"),
            per_device_train_batch_size=32,
            num_generations=8,
            max_completion_length=3,
            max_steps=100,
            learning_rate=1e-4,
            beta=0.04,
            logging_steps=1,
            logging_nan_inf_filter=False,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=0,
            temperature=1.0,
        ),
        callbacks=[grpo_rec],
    )
    grpo.train()
    (HERE / "grpo_tiny.json").write_text(json.dumps(grpo_rec.points))
    print(f"recorded {len(sft_rec.points)} SFT and {len(grpo_rec.points)} GRPO points")


if __name__ == "__main__":
    main()
