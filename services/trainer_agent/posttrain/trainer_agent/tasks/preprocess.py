"""``preprocess_dataset``: JSONL or Parquet in, a tokenized dataset (``save_to_disk``) out.

Params (flat or under ``config``): ``input_path`` (required), ``model_path`` (whose tokenizer;
default the tiny model), ``output_dir`` (default ``<job dir>/dataset``), ``max_rows``.
The output keeps the text columns (trainers tokenize with their own settings) and adds
``input_ids``, ``attention_mask`` and ``num_tokens``; rows and tokens are reported as outputs and
as a metric point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from posttrain.events.tasks import PreprocessParams
from posttrain.trainer_agent.tasks.context import StageContext, StageError
from posttrain.trainer_agent.tasks.data import TOKEN_COLUMNS, load_rows
from posttrain.trainer_agent.tiny import resolve_model_path

# Which columns hold the text, by dataset kind, in the order they are joined for counting.
_TEXT_FIELDS = (("prompt", "completion"), ("prompt", "chosen"), ("prompt",), ("text",))


def _row_text(row: dict[str, Any]) -> str:
    for fields in _TEXT_FIELDS:
        if all(isinstance(row.get(f), str) for f in fields):
            return "".join(row[f] for f in fields)
    if isinstance(row.get("messages"), list):
        return "".join(str(m.get("content", "")) for m in row["messages"])
    raise StageError(
        "preprocess_dataset: each row needs text in prompt/completion, prompt/chosen/rejected, "
        f"prompt, text or messages; got columns {sorted(row)}"
    )


def preprocess_dataset(ctx: StageContext) -> dict[str, Any]:
    from transformers import AutoTokenizer

    params = ctx.read_params(PreprocessParams)
    source = ctx.required("input_path", params.input_path)
    dataset = load_rows(source, what="params.input_path")
    dataset = dataset.remove_columns([c for c in TOKEN_COLUMNS if c in dataset.column_names])
    if params.max_rows is not None and params.max_rows < len(dataset):
        dataset = dataset.select(range(params.max_rows))
    model_path = resolve_model_path(params.model_path, ctx.models_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    def tokenize(batch: dict[str, list[Any]]) -> dict[str, Any]:
        rows = [
            dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)
        ]
        encoded = tokenizer([_row_text(r) for r in rows])
        return {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "num_tokens": [len(ids) for ids in encoded["input_ids"]],
        }

    tokenized = dataset.map(tokenize, batched=True)
    output = Path(params.output_dir or ctx.job_dir / "dataset")
    tokenized.save_to_disk(str(output))
    counts = tokenized["num_tokens"]
    outputs = {
        "dataset": str(output),
        "rows": len(tokenized),
        "tokens": int(sum(counts)),
        "max_tokens_per_row": int(max(counts)) if counts else 0,
        "columns": [c for c in tokenized.column_names],
    }
    if not outputs["rows"]:
        raise StageError(f"preprocess_dataset: {source!r} has no rows")
    ctx.reporter(step=0, rows=outputs["rows"], tokens=outputs["tokens"])
    return outputs
