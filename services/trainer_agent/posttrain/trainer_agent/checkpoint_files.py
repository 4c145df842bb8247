"""What the platform writes next to a checkpoint, and reads back: whether it is finite.

Each checkpoint a stage saves gets a small JSON marker (``posttrain_checkpoint.json`` inside a
checkpoint directory, ``<file>.posttrain.json`` beside a checkpoint file) with its step and what
of it is not finite (``non_finite``: "weights", "loss"). A later launch, a retry or a rollback
reads it to skip poisoned checkpoints; a checkpoint without a marker (saved by an older version,
or by hand) counts as finite.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

from posttrain.trainer_agent.core.checkpoints import Checkpoint
from posttrain.trainer_agent.stage_files import write_json_atomic

MARKER = "posttrain_checkpoint.json"
HF_PREFIX = "checkpoint-"


def marker_path(checkpoint: str | Path) -> Path:
    path = Path(checkpoint)
    return path / MARKER if path.is_dir() else path.with_name(path.name + ".posttrain.json")


def write_marker(checkpoint: str | Path, step: int, non_finite: tuple[str, ...]) -> None:
    write_json_atomic(marker_path(checkpoint), {"step": step, "non_finite": list(non_finite)})


def read_marker(checkpoint: str | Path, step: int) -> Checkpoint:
    """The checkpoint at ``checkpoint`` as its marker describes it (finite without one)."""
    non_finite: tuple[str, ...] = ()
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads(marker_path(checkpoint).read_bytes())
        if isinstance(doc, dict) and isinstance(doc.get("non_finite"), list):
            non_finite = tuple(str(x) for x in doc["non_finite"])
    return Checkpoint(step, str(checkpoint), non_finite)


def hf_checkpoints(output_dir: str | Path) -> list[Checkpoint]:
    """The ``checkpoint-<step>`` directories of a Hugging Face run, by step."""
    found = []
    directory = Path(output_dir)
    if directory.is_dir():
        for path in directory.glob(f"{HF_PREFIX}*"):
            suffix = path.name.removeprefix(HF_PREFIX)
            if path.is_dir() and suffix.isdigit():
                found.append(read_marker(path, int(suffix)))
    return sorted(found, key=lambda c: c.step)


def non_finite_parts(model: Any, loss: Any) -> tuple[str, ...]:
    """What of a model's state is not finite: its weights (any parameter with a NaN or an
    infinity) and the loss of the step (a number, or None when unknown)."""
    parts = []
    if model is not None and not weights_finite(model):
        parts.append("weights")
    if isinstance(loss, int | float) and not isinstance(loss, bool) and not math.isfinite(loss):
        parts.append("loss")
    return tuple(parts)


def weights_finite(model: Any) -> bool:
    import torch

    with torch.no_grad():
        # One flag per tensor, one device sync for all of them.
        flags = [torch.isfinite(p).all() for p in model.parameters()]
        return bool(torch.stack([f.to(flags[0].device) for f in flags]).all()) if flags else True
