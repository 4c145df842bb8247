"""``command``: run any program (argv, no shell) as a stage, e.g. a verl PPO run.

Config: ``argv`` (list of strings, required), ``env`` (extra environment), ``cwd``,
``metrics_file`` (default ``<attempt dir>/<job id>_metrics.jsonl``), ``checkpoint`` (a path the
program writes, reported as the ``checkpoint`` output), ``accepts`` (the actions the program
takes beyond cancel: ``[pause]`` for a program that goes on from its own checkpoints when it is
started again; the orchestrator refuses the others on the record).

The program gets ``POSTTRAIN_JOB_ID`` (and pipeline, stage, attempt), ``POSTTRAIN_METRICS_FILE``
and ``VERL_FILE_LOGGER_PATH`` naming the metrics file, and ``POSTTRAIN_METRICS_DIR`` its
directory (so ``create_metrics_file_writer(job_id, metrics_dir)`` writes exactly that file).
This task tails the file onto the platform
while it runs: lines in the project's format (``create_metrics_file_writer``) or verl's ``file``
logger format both work. Its stdout and stderr go to the stage log. ``CancelStage`` stops it
(SIGTERM, then SIGKILL); so does a ``PauseStage`` when ``accepts`` names pause (the stage is
then paused, and a resume starts the same argv again); other controls need a trainer with step
boundaries: each is refused on the record (ActionRefused).
A failure whose log shows torch's out-of-memory error is reported as ``oom``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from posttrain.events.failures import kind_from_text
from posttrain.events.tasks import CommandParams
from posttrain.trainer_agent.metrics_file import metrics_file_path
from posttrain.trainer_agent.stage_files import LOG, file_size, read_tail
from posttrain.trainer_agent.tailer import MetricsFileTailer, follow
from posttrain.trainer_agent.tasks.context import StageContext, StageError

TERMINATE_GRACE_S = 10.0


class CommandFailed(Exception):
    """The program exited non-zero; ``kind`` is ``oom`` when its log says so."""

    def __init__(self, message: str, kind: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.kind = kind
        self.details = details

    @classmethod
    def from_log(
        cls, program: str, code: int, log: Path, since: int, outputs: dict[str, Any]
    ) -> CommandFailed:
        """``program`` exited with ``code``: the failure, classified (OOM or error) by what the
        log gained since ``since``, which its details quote."""
        log_tail = read_tail(log, since)
        return cls(
            f"{program} exited with status {code}",
            kind_from_text(log_tail),
            {"log_tail": log_tail, **outputs},
        )


def run_command(ctx: StageContext) -> dict[str, Any]:
    params = ctx.read_params(CommandParams)
    argv = params.argv  # a non-empty list of strings, as its model checked
    metrics_file = Path(params.metrics_file or metrics_file_path(ctx.attempt_dir, ctx.run.job_id))
    env = dict(os.environ)
    env.update({k: str(v) for k, v in params.env.items()})
    env.setdefault("POSTTRAIN_METRICS_FILE", str(metrics_file))
    env.setdefault("VERL_FILE_LOGGER_PATH", str(metrics_file))
    env.setdefault("POSTTRAIN_METRICS_DIR", str(metrics_file.parent))
    log_size_before = file_size(ctx.attempt_dir / LOG)

    stop_tailing = threading.Event()
    tailer = MetricsFileTailer(metrics_file, ctx.attempt_dir / "metrics.offset")
    follower = threading.Thread(
        target=follow,
        args=(tailer, ctx.reporter, stop_tailing),
        kwargs={"poll_s": 0.5},
        name="metrics-tail",
        daemon=True,
    )
    follower.start()
    started = time.monotonic()
    try:
        process = subprocess.Popen(argv, env=env, cwd=params.cwd)
    except OSError as exc:
        stop_tailing.set()
        raise StageError(f"command {argv[0]!r} cannot start: {exc}") from exc
    code = _wait(ctx, process, params.accepts)
    stop_tailing.set()
    follower.join(60)
    outputs: dict[str, Any] = {
        "exit_code": code,
        "metrics_file": str(metrics_file),
        "metrics_lines_skipped": tailer.skipped_lines,
        "duration_s": round(time.monotonic() - started, 3),
    }
    if ctx.stop_reason in ("cancel", "pause"):
        return {"stopped": ctx.stop_reason, "step": 0, **outputs}
    if code != 0:
        raise CommandFailed.from_log(
            "command", code, ctx.attempt_dir / LOG, log_size_before, outputs
        )
    if params.checkpoint:
        outputs["checkpoint"] = params.checkpoint
    return outputs


def _wait(ctx: StageContext, process: subprocess.Popen[bytes], accepts: list[str]) -> int:
    while True:
        try:
            return process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
        directive = ctx.poll_control()
        for applied in directive.applied:
            if applied.action == "cancel":
                ctx.stopping("cancel", 0)
                ctx.action_applied(applied, 0)
                _terminate(process)
            elif applied.action == "pause" and "pause" in accepts and ctx.stop_reason is None:
                ctx.stopping("pause", 0)
                ctx.action_applied(applied, 0)
                _terminate(process)
            else:
                _refuse(ctx, applied.action_id, applied.action, accepts)
        if directive.rollback is not None:
            _refuse(ctx, directive.rollback.action_id, "rollback", accepts)


def _refuse(ctx: StageContext, action_id: str, action: str, accepts: list[str]) -> None:
    takes = ", ".join(["cancel", *accepts])
    reason = (
        f"a command stage runs an external program with no step boundary: {action} cannot be "
        f"applied (it takes {takes}; params.accepts declares what its program handles)"
    )
    print(f"posttrain: {action} refused: {reason}", flush=True)
    ctx.action_refused(action_id, action, None, reason)


def _terminate(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
