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


def _rank_witness_class() -> type:
    from transformers import TrainerCallback

    class RankWitness(TrainerCallback):  # type: ignore[misc]
        """Each rank's own record of what it did: ``witness-rank<RANK>.jsonl`` in ``path``,
        one line per step end (the step, this rank's optimizer learning rate after the
        platform's callback applied that boundary's controls, and a sum of its weights), per
        checkpoint save and per training start, written by the rank process itself."""

        def __init__(self, path: str) -> None:
            import os

            self.file = os.path.join(path, f"witness-rank{os.environ.get('RANK', '0')}.jsonl")

        def _write(self, **doc: Any) -> None:
            import json
            import os

            with open(self.file, "a") as fh:
                fh.write(json.dumps({**doc, "pid": os.getpid()}) + "\n")

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self._write(event="begin", step=int(state.global_step))

        def on_step_end(
            self,
            args: Any,
            state: Any,
            control: Any,
            optimizer: Any = None,
            model: Any = None,
            **kw: Any,
        ) -> None:
            self._write(
                event="step",
                step=int(state.global_step),
                lr=float(optimizer.param_groups[0]["lr"]),
                stop=bool(control.should_training_stop),
                # A fingerprint of this rank's weights: DDP keeps every rank's the same.
                weights=float(sum(float(p.detach().double().sum()) for p in model.parameters())),
            )

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self._write(event="save", step=int(state.global_step))

    return RankWitness


def RankWitness(path: str) -> Any:
    """A ``module:Name`` for ``params.config.callbacks`` (the class is built when called, so
    importing this module does not import transformers)."""
    return _rank_witness_class()(path)


def FailOnRank(rank: int, step: int) -> Any:
    """A callback that raises on one rank only, at the end of ``step``."""
    from transformers import TrainerCallback

    class _FailOnRank(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            import os

            if int(os.environ.get("RANK", "0")) == rank and state.global_step == step:
                raise RuntimeError(f"rank {rank} broke at step {step}")

    return _FailOnRank()
