"""Datasets from local files: JSONL, JSON, Parquet, or a directory written by ``save_to_disk``
(what ``preprocess_dataset`` produces)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from posttrain.trainer_agent.tasks.context import StageError

# Columns preprocess_dataset adds; trainers tokenize the text columns themselves.
TOKEN_COLUMNS = ("input_ids", "attention_mask", "completion_mask", "num_tokens")


def load_rows(path: str | Path, *, what: str = "dataset") -> Any:
    from datasets import Dataset, load_dataset, load_from_disk

    p = Path(path)
    if not p.exists():
        raise StageError(f"{what} {str(p)!r} does not exist")
    if p.is_dir():
        if (p / "dataset_info.json").exists() or (p / "state.json").exists():
            loaded = load_from_disk(str(p))
            return loaded["train"] if hasattr(loaded, "keys") and "train" in loaded else loaded
        files = sorted([*p.glob("*.jsonl"), *p.glob("*.parquet")])
        if not files:
            raise StageError(f"{what} directory {str(p)!r} holds no .jsonl or .parquet file")
        p = files[0]
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json"):
        dataset = load_dataset("json", data_files=str(p), split="train")
    elif suffix == ".parquet":
        dataset = load_dataset("parquet", data_files=str(p), split="train")
    else:
        raise StageError(f"{what} {str(p)!r}: expected .jsonl, .json, .parquet or a directory")
    assert isinstance(dataset, Dataset)
    return dataset


def text_columns(dataset: Any) -> Any:
    """The dataset without the token columns that preprocessing added."""
    drop = [c for c in TOKEN_COLUMNS if c in dataset.column_names]
    return dataset.remove_columns(drop) if drop else dataset
