"""Functions that stages of the ``python`` task run in the tests."""

from __future__ import annotations

from typing import Any


def raise_oom(ctx: Any, gib: float = 20.0) -> dict[str, Any]:
    import torch

    ctx.reporter(step=1, loss=1.0)
    raise torch.OutOfMemoryError(
        f"CUDA out of memory. Tried to allocate {gib:.2f} GiB (GPU 0; 79.15 GiB total capacity)"
    )


def raise_value_error(ctx: Any) -> dict[str, Any]:
    raise ValueError("the dataset has no column 'prompt'")


def echo(ctx: Any, **kwargs: Any) -> dict[str, Any]:
    return {"job_id": ctx.run.job_id, **kwargs}
