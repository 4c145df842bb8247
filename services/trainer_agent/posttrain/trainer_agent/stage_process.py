"""The stage process: runs one launch of one RunStage, writes how it ended, exits.

``python -m posttrain.trainer_agent.stage_process <attempt_dir> <launch>`` (or forked by the
launcher's zygote). It reads ``spec-<n>.json``, reports metrics itself (straight to Kafka, with
its own spill file; on a remote host, to the metrics file its spec names, which the agent
follows: ``supervisors.ssh``), writes CheckpointSaved/ActionApplied/ActionRefused lines for
the agent to publish, and ends with ``result-<n>.json``, a codec-encoded ``LaunchEnded``
(``stage_files.write_result``) with the fields of one of three shapes:

    {"status": "succeeded", "outputs": {...}}
    {"status": "paused", "step": 40, "checkpoint": ".../checkpoint-40", "non_finite": [],
     "resume_checkpoint": ".../checkpoint-40"}
    {"status": "failed", "kind": "oom" | "error" | "cancelled", "error": "...", "details": {}}

A crash here (or an OOM kill) never touches the agent: it is another process. A multi-rank
training stage (``ranks.stage_ranks``) runs its task in N ranks that this process starts with
torchrun's launcher (``rank_launch``); rank 0 reports, and its result is the launch's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from posttrain.events.failures import is_oom_exception
from posttrain.events.kafka import KafkaSettings
from posttrain.events.kafka.settings import DEFAULT_BOOTSTRAP
from posttrain.events.messages import RunStage
from posttrain.events.tasks import stage_config
from posttrain.trainer_agent.core.failure import tail
from posttrain.trainer_agent.metrics_file import FileReporter
from posttrain.trainer_agent.ranks import Ranks, SilentReporter, stage_ranks
from posttrain.trainer_agent.reporting import TrainingCallback
from posttrain.trainer_agent.stage_files import (
    ControlInbox,
    EventOutbox,
    read_json,
    result_path,
    spec_path,
    write_result,
)
from posttrain.trainer_agent.tasks import StageContext, task_for
from posttrain.trainer_agent.witness import witness_start

# How long the end of a stage may wait for its last metric points to reach Kafka; whatever is
# not delivered by then stays in the spill file and is sent by the next reporter of the job.
METRICS_CLOSE_TIMEOUT_S = 30.0


class Terminated(BaseException):
    """SIGTERM: the agent stops this stage (cancel without a step boundary, or a timeout)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def run(attempt_dir: Path, launch: int) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    spec = read_json(spec_path(attempt_dir, launch))
    if not isinstance(spec, dict):
        print(f"posttrain: no readable spec for launch {launch} in {attempt_dir}", flush=True)
        return 2
    run_stage = RunStage.model_validate(spec["run"])
    try:
        config = stage_config(run_stage.params)
        nproc = stage_ranks(run_stage.task, config, run_stage.resources.gpus)
    except ValueError as exc:
        result: dict[str, Any] = {
            "status": "failed",
            "kind": "error",
            "error": str(exc),
            "details": {},
            "finished_at": time.time(),
        }
    else:
        if nproc > 1:
            # This process supervises the ranks (torchrun's launcher); rank 0 reports.
            from posttrain.trainer_agent.rank_launch import run_ranks

            try:
                result = run_ranks(attempt_dir, launch, nproc)
            except Exception as exc:  # the launcher itself failed: the outcome says how
                traceback.print_exc()
                result = {
                    "status": "failed",
                    "kind": "error",
                    "error": tail(f"starting {nproc} ranks failed: {exc}"),
                    "details": {"exception": type(exc).__qualname__},
                    "finished_at": time.time(),
                }
        else:
            result = serve(attempt_dir, launch, spec)
    write_result(result_path(attempt_dir, launch), result, key=run_stage.pipeline_id)
    print(f"posttrain: launch {launch} ended: {result['status']}", flush=True)
    return 0


def serve(
    attempt_dir: Path, launch: int, spec: dict[str, Any], ranks: Ranks | None = None
) -> dict[str, Any]:
    """Run the stage's task in this process (one rank of it, where ``ranks`` says so) and
    return how it ended. Only rank 0 reports metrics and events."""
    ranks = ranks or Ranks()
    run_stage = RunStage.model_validate(spec["run"])
    kafka = spec.get("kafka", {})
    # The security settings come from the environment the agent gave this process
    # (``stage_spec.stage_env``), never from the spec file, which holds no secret.
    settings = dataclasses.replace(
        KafkaSettings.from_env(client_id=f"posttrain-stage-{run_stage.stage}"),
        bootstrap_servers=kafka.get("bootstrap_servers", DEFAULT_BOOTSTRAP),
        namespace=kafka.get("namespace", ""),
    )
    work_dir = Path(spec["work_dir"])
    reporter = _reporter(run_stage, spec, settings, work_dir, launch, ranks)
    ctx = StageContext(
        run=run_stage,
        attempt_dir=attempt_dir,
        work_dir=work_dir,
        reporter=reporter,
        inbox=ControlInbox(attempt_dir, int(spec.get("control_offset", 0))),
        outbox=EventOutbox(attempt_dir, run_stage, enabled=ranks.is_main),
        resume_from=spec.get("resume_from"),
        config=stage_config(run_stage.params),
        ranks=ranks,
    )
    rank = f" rank {ranks.rank}/{ranks.world_size}" if ranks.world_size > 1 else ""
    print(
        f"posttrain: {run_stage.task} {run_stage.command_id} launch {launch}{rank} "
        f"(resume from {ctx.resume_from})",
        flush=True,
    )
    if ranks.is_main:
        witness_start(run_stage, launch, ctx.resume_from)
    resume_action = spec.get("resume_action")
    if isinstance(resume_action, dict):
        ctx.outbox.action_applied(
            str(resume_action.get("action_id")),
            "resume",
            int(spec.get("resume_step") or 0),
            {"checkpoint": ctx.resume_from},
        )
    result = _run_task(ctx)
    # Every control the task was handed is answered: what it did not apply is refused.
    ctx.refuse_unanswered(ctx.stop_step, f"the stage ended ({result['status']}) before applying it")
    try:
        left = reporter.close(timeout=METRICS_CLOSE_TIMEOUT_S)
        if left:
            print(f"posttrain: {left} metric points left in the spill file", flush=True)
    except Terminated:
        pass
    except Exception:  # the outcome stands; the points left are in the spill file
        traceback.print_exc()
    finally:
        result["control_offset"] = ctx.inbox.offset
        result["finished_at"] = time.time()
    return result


def _reporter(
    run_stage: RunStage,
    spec: dict[str, Any],
    settings: KafkaSettings,
    work_dir: Path,
    launch: int,
    ranks: Ranks,
) -> TrainingCallback:
    """Rank 0's reporter: to Kafka, or to the metrics file the spec names (a stage on a remote
    host, whose agent follows that file); the other ranks report nothing."""
    if not ranks.is_main:
        return SilentReporter(run_stage.job_id)
    if spec.get("metrics_file"):
        return FileReporter(run_stage.job_id, spec["metrics_file"])
    return TrainingCallback(
        run_stage.job_id,
        pipeline_id=run_stage.pipeline_id,
        stage=run_stage.stage,
        attempt=run_stage.attempt,
        settings=settings,
        spill_dir=work_dir / "spill",
        # Readable and unique: a launch number is used once, the pid tells a relaunch apart.
        source=f"{socket.gethostname()}:{run_stage.command_id}:launch{launch}:{os.getpid()}",
    )


def _run_task(ctx: StageContext) -> dict[str, Any]:
    try:
        outputs = task_for(ctx.run.task)(ctx)
    except Terminated:
        return {
            "status": "failed",
            "kind": "cancelled",
            "error": "terminated by the agent",
            "details": {},
        }
    except BaseException as exc:  # every failure becomes a result: the agent reports it
        chain = _exception_chain(exc)
        names = [f"{type(e).__module__}.{type(e).__qualname__}" for e in chain]
        kind = getattr(exc, "kind", None) or ("oom" if is_oom_exception(names) else "error")
        details: dict[str, Any] = {"exception": names[0], **getattr(exc, "details", {})}
        if kind == "oom":
            details["memory"] = memory_stats()
        text = "".join(traceback.format_exception(exc))
        print(text, file=sys.stderr, flush=True)
        return {"status": "failed", "kind": kind, "error": tail(text), "details": details}
    if ctx.stop_reason == "pause":
        saved = ctx.checkpoints[-1] if ctx.checkpoints else None
        resume = ctx.resume_point()
        return {
            "status": "paused",
            "step": ctx.stop_step,
            "checkpoint": ctx.last_checkpoint,
            # A pause on a NaN saves NaN weights: the resume goes on from the last good ones.
            "non_finite": list(saved.non_finite) if saved is not None else [],
            "resume_checkpoint": resume.path if resume is not None else None,
            "outputs": outputs,
        }
    if ctx.stop_reason == "cancel":
        return {
            "status": "failed",
            "kind": "cancelled",
            "error": f"cancelled by CancelStage at step {ctx.stop_step}",
            "details": {"step": ctx.stop_step, "checkpoint": ctx.last_checkpoint},
        }
    return {"status": "succeeded", "outputs": outputs}


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def memory_stats() -> dict[str, Any]:
    """What the memory looked like when the stage ran out: the GPU's allocator statistics where
    torch and a GPU are there, and this process's resident memory."""
    stats: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        import psutil

        stats["rss_bytes"] = psutil.Process().memory_info().rss
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(Exception):
            if torch.cuda.is_available():
                raw = torch.cuda.memory_stats()
                stats["cuda"] = {
                    "allocated_bytes": torch.cuda.memory_allocated(),
                    "reserved_bytes": torch.cuda.memory_reserved(),
                    "max_allocated_bytes": torch.cuda.max_memory_allocated(),
                    "total_bytes": torch.cuda.get_device_properties(0).total_memory,
                    "num_alloc_retries": raw.get("num_alloc_retries", 0),
                    "num_ooms": raw.get("num_ooms", 0),
                }
    return stats


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m posttrain.trainer_agent.stage_process ATTEMPT_DIR LAUNCH")
        return 2
    return run(Path(args[0]), int(args[1]))


if __name__ == "__main__":
    sys.exit(main())
