"""Which rank of a multi-process stage this process is, and how the ranks agree.

A stage with several ranks (``resources.gpus > 1``, or ``params.config.nproc_per_node``) runs
one process per rank, started by torchrun's launcher (``rank_launch``). Rank 0 is the stage's
voice: it reads the control file, reports metrics and writes the events and the result. Every
other rank trains in step with it and says nothing; whatever rank 0 decides at a step boundary
(a control directive, a rollback's target) is broadcast so that every rank does the same thing
at the same step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from posttrain.trainer_agent.reporting import TrainingCallback

T = TypeVar("T")

# The config key a stage names its rank count with where it has no GPUs (CPU, gloo); torchrun's
# own name for it.
NPROC_KEY = "nproc_per_node"
# The tasks whose training loop runs as several ranks (torch.distributed, the trainer's DDP).
MULTI_RANK_TASKS = frozenset({"train_model"})


@dataclass(frozen=True, slots=True)
class Ranks:
    """This process's place among the stage's ranks (0 of 1 for an ordinary stage)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Ranks:
        """torchrun's RANK and WORLD_SIZE (a single process when they are absent)."""
        env = os.environ if env is None else env
        return cls(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")))

    def share(self, value: T) -> T:
        """Rank 0's ``value``, on every rank (a collective: every rank calls it at the same
        point). The identity where the stage has one process."""
        if self.world_size <= 1:
            return value
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "a multi-rank stage must set up torch.distributed (the trainer does) before its "
                "first step boundary"
            )
        box: list[Any] = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[no-any-return]


def load_indexed_cpu_locations() -> None:
    """Let ``torch.load`` map onto ``cpu:<n>``. On CPU ranks (gloo) the trainer's device is
    ``cpu:<local rank>``, and transformers resumes a multi-rank run's optimizer state with
    ``map_location=args.device``, which torch's CPU deserializer (``"cpu"`` only) refuses: a
    paused CPU stage could not resume. Registered once per process."""
    global _INDEXED_CPU_REGISTERED
    if _INDEXED_CPU_REGISTERED:
        return
    import torch.serialization

    torch.serialization.register_package(11, _no_tag, _indexed_cpu_storage)
    _INDEXED_CPU_REGISTERED = True


_INDEXED_CPU_REGISTERED = False


def _no_tag(storage: Any) -> str | None:
    return None  # saving is tagged as before


def _indexed_cpu_storage(storage: Any, location: str) -> Any:
    return storage if location.startswith("cpu:") else None


def stage_ranks(task: str, config: Mapping[str, Any], gpus: int) -> int:
    """How many processes a stage runs: for ``train_model``, ``nproc_per_node`` where the
    config names it, else one per GPU it was given; one for every other task (a ``command``
    stage starts its own processes on the GPUs it is given). Raises ValueError naming the field
    for a value that is not a positive integer."""
    if task not in MULTI_RANK_TASKS:
        return 1
    value = config.get(NPROC_KEY)
    if value is None:
        return max(1, gpus)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"params.config.{NPROC_KEY} must be a positive integer, got {value!r}")
    return value


class SilentReporter(TrainingCallback):
    """The metrics reporter of a rank other than 0: the stage's metrics are rank 0's alone (one
    stream, one source), so the others report nothing and open no connection."""

    def __init__(self, job_id: str) -> None:  # no sender thread, no spill file, no broker
        self.job_id = job_id

    def __call__(self, step: int, epoch: float | None = None, **fields: Any) -> None:
        pass

    def submit(self, source: str, seq: int, point: Any) -> None:
        pass

    def flush(self, timeout: float | None = 10.0) -> bool:
        return True

    def wait_durable(self, timeout: float | None = 10.0) -> bool:
        return True

    def close(self, timeout: float = 10.0) -> int:
        return 0
