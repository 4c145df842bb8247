"""Tiny real models for machines without a GPU (and without a model hub).

``build_tiny_model(directory)`` writes a Hugging Face model directory (a Llama-architecture causal
LM built from a config, about 100k parameters, and a character-level tokenizer built with
``tokenizers``) that every task loads like any other local model. A stage names it with
``model_path: tiny-llama``; on a GPU node the same tasks take any HF model directory.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

TINY_MODEL_NAMES = frozenset({"tiny-llama", "tiny"})

# Every character the shipped datasets use, plus the letters for free text.
CHARACTERS = "0123456789+-*/=()<>.,:;!?'\" abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\n"
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"


def build_char_tokenizer() -> Any:
    """A fast tokenizer that maps each character to one token (WordLevel over single chars)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([PAD, BOS, EOS, UNK, *CHARACTERS])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    # Characters are tokens: decoding concatenates them back without spaces.
    tokenizer.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
    )
    fast.padding_side = "left"  # generation appends on the right
    return fast


def build_tiny_model(
    directory: str | Path,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
) -> Path:
    """Write a tiny Llama and its tokenizer to ``directory`` (once: an existing one is kept)."""
    directory = Path(directory)
    if (directory / "config.json").exists():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    lock = directory.parent / f".{directory.name}.lock"
    with open(lock, "w") as fh:
        # Two stages starting at once on one agent must not write the same directory.
        fcntl.flock(fh, fcntl.LOCK_EX)
        if (directory / "config.json").exists():
            return directory
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        tokenizer = build_char_tokenizer()
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=True,
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
        partial = directory.with_name(directory.name + f".partial-{os.getpid()}")
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(directory)
    return directory


def resolve_model_path(model_path: str, models_dir: Path) -> str:
    """A local model directory for ``model_path``: the tiny model's name builds it."""
    if model_path in TINY_MODEL_NAMES:
        return str(build_tiny_model(models_dir / "tiny-llama"))
    return model_path
