"""A multi-rank stage: the stage process starts its ranks with torchrun's launcher and waits.

The stage process (the one the agent launched and watches: pid, process group, result file)
parses a torchrun command line (``--standalone --nproc-per-node N``: a c10d rendezvous on a
free local port) with ``torch.distributed.run`` and runs torchrun's elastic agent in-process
with the stage's rank function as the entrypoint. The ranks are forked (``--start-method
fork``): the stage process was forked from the zygote with torch, transformers and TRL imported,
so a rank starts in milliseconds instead of importing them again, and the ranks stay in the
stage's process group, so the agent's signals (cancel, timeout, kill) reach every one of them.

Each rank sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR`` from torchrun; the HF
trainer sees them, sets up torch.distributed (NCCL on GPUs, gloo on CPU) and trains with DDP.
Rank 0 returns the stage's result, which this process writes as the launch's result. A rank
that fails writes its own result beside it and exits non-zero, so that torchrun stops the
others instead of leaving them waiting in a collective; the first rank to fail gives the
stage's outcome.
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path
from typing import Any

from posttrain.trainer_agent.core.failure import tail
from posttrain.trainer_agent.ranks import Ranks, load_indexed_cpu_locations
from posttrain.trainer_agent.stage_files import read_json, read_result, spec_path, write_result

SHUTDOWN_TIMEOUT_S = 10


def rank_result_path(attempt_dir: Path, launch: int, rank: int) -> Path:
    """Where a failed rank leaves its result (the launch's result is rank 0's, or the first
    failure's)."""
    return attempt_dir / f"result-{launch}.rank{rank}.json"


def torchrun_argv(attempt_dir: Path, launch: int, nproc: int) -> list[str]:
    """The torchrun command line this stage's ranks are started with (the entrypoint itself
    is the rank function, not a script)."""
    return [
        # What ``--standalone`` means (torchrun applies it in its main, not its parser): a c10d
        # rendezvous on a free local port, one node.
        "--nnodes=1",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=127.0.0.1:0",
        f"--rdzv-id={uuid.uuid4()}",
        f"--nproc-per-node={nproc}",
        "--start-method=fork",
        # A failed rank fails the launch: the agent's retry policy decides what comes next.
        "--max-restarts=0",
        "--monitor-interval=0.1",
        # A rank stuck in a collective when another failed does not see SIGTERM: it is killed
        # after this, well within the agent's own grace.
        f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}",
        f"--log-dir={attempt_dir / f'ranks-{launch}'}",
        "posttrain-stage-rank",  # torchrun's "training script": unused, the entrypoint is ours
    ]


def run_ranks(attempt_dir: Path, launch: int, nproc: int) -> dict[str, Any]:
    """Start ``nproc`` ranks of launch ``launch``, wait for all of them, return the result."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, parse_args

    argv = torchrun_argv(attempt_dir, launch, nproc)
    config, _, _ = config_from_args(parse_args(argv))  # type: ignore[no-untyped-call]
    print(f"posttrain: launch {launch}: {nproc} ranks (torchrun, fork)", flush=True)
    try:
        returned = elastic_launch(config, _rank_main)(str(attempt_dir), launch)
    except ChildFailedError as exc:
        # The rank that failed first is the cause; the others failed because it went (a
        # collective whose peer left, torchrun's SIGTERM). torchrun names the failure it saw
        # first, which is not always the first (two ranks that exited before its poll are taken
        # in rank order): the ranks' own results say to the microsecond when each one ended.
        saved = [
            doc
            for rank in range(nproc)
            if (doc := read_result(rank_result_path(attempt_dir, launch, rank))) is not None
        ]
        if saved:
            return min(saved, key=lambda doc: float(doc.get("finished_at") or 0.0))
        rank, failure = exc.get_first_failure()
        return _failed(
            "error", f"rank {rank} exited with status {failure.exitcode}: {failure.message}"
        )
    except SignalException as exc:
        # The agent stopped the stage (cancel without a step boundary, timeout): rank 0 says how
        # far it got when it could.
        main = read_result(rank_result_path(attempt_dir, launch, 0))
        if main is not None:
            return main
        return _failed("cancelled", f"terminated by the agent ({signal.Signals(exc.sigval).name})")
    result = returned.get(0)
    if not isinstance(result, dict):
        return _failed("error", f"rank 0 returned no result ({result!r})")
    return result


def _failed(kind: str, error: str) -> dict[str, Any]:
    return {
        "status": "failed",
        "kind": kind,
        "error": tail(error),
        "details": {},
        "finished_at": time.time(),
    }


def _rank_main(attempt_dir: str, launch: int) -> dict[str, Any] | None:
    """One rank, in a process torchrun forked. Returns the stage's result on rank 0."""
    from posttrain.trainer_agent import stage_process

    # Forked from the elastic agent, whose handler would turn the agent's SIGTERM into an
    # error: the stage's own handler makes it a cancellation.
    signal.signal(signal.SIGTERM, stage_process._on_sigterm)
    ranks = Ranks.from_env()
    load_indexed_cpu_locations()
    folder = Path(attempt_dir)
    spec = read_json(spec_path(folder, launch))
    assert isinstance(spec, dict), f"no readable spec for launch {launch} in {folder}"
    result = stage_process.serve(folder, launch, spec, ranks)
    if result["status"] == "failed":
        key = str(spec["run"]["pipeline_id"])
        write_result(rank_result_path(folder, launch, ranks.rank), result, key=key)
        # Non-zero: torchrun stops the other ranks rather than leave them in a collective.
        raise SystemExit(1)
    return result if ranks.is_main else None
