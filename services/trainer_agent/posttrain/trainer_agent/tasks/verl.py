"""``train_model`` on verl: ``algorithm: ppo`` (and ``grpo`` with ``backend: verl``).

The stage process supervises verl's ``main_ppo`` as a child process (in its own process group):
it builds the command line from the stage's params (``core/verl_command``, params as the
catalogue's ``VerlParams``), tails verl's ``file`` logger onto the metrics topic (one file per
launch of verl, which truncates the file it opens), reports each ``global_step_N`` directory
verl saves as a CheckpointSaved, and reports the latest as the stage's ``checkpoint`` output.

verl has no callback API, so control commands are carried out around it:

- pause: SIGTERM to verl's group; the stage pauses at its last checkpoint, and the resume (a new
  launch of this task, ``resume_from`` set by the agent) restarts verl with
  ``trainer.resume_mode=resume_path`` from it. Steps after that checkpoint are trained again.
- learning-rate change: verl is stopped and started again from its last checkpoint (from the
  start when it has none) with the new rate; the rate holds for later launches of the attempt.
- cancel: SIGTERM to verl's group, the stage ends cancelled.
- force-checkpoint and rollback are refused on the record (``VERL_REFUSALS``): verl saves only
  every ``save_steps`` steps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from posttrain.events.actions import VERL_REFUSALS
from posttrain.events.tasks import VerlParams, verl_params
from posttrain.trainer_agent.core.checkpoints import Checkpoint
from posttrain.trainer_agent.core.control import Applied
from posttrain.trainer_agent.core.paths import safe_name
from posttrain.trainer_agent.core.verl_command import Launch, command_line, environment
from posttrain.trainer_agent.stage_files import LOG, file_size
from posttrain.trainer_agent.tailer import MetricsFileTailer, follow
from posttrain.trainer_agent.tasks.command import CommandFailed
from posttrain.trainer_agent.tasks.context import StageContext, StageError

TERMINATE_GRACE_S = 30.0
POLL_S = 0.2
# verl names each checkpoint after the global step it was saved at.
_STEP_DIR = re.compile(r"global_step_(\d+)")
# The learning rate this attempt runs at, once a change has been applied (a resume reads it).
STATE_FILE = "verl-state.json"


def checkpoints_in(directory: Path) -> list[Checkpoint]:
    """The complete ``global_step_N`` checkpoints under verl's ``default_local_dir``, by step.

    verl writes ``latest_checkpointed_iteration.txt`` once a save is complete: a directory past
    the step it names is still being written."""
    try:
        latest = int((directory / "latest_checkpointed_iteration.txt").read_text().strip())
    except (FileNotFoundError, ValueError):
        return []
    found = []
    for child in directory.iterdir() if directory.is_dir() else ():
        match = _STEP_DIR.fullmatch(child.name)
        if match and child.is_dir() and int(match.group(1)) <= latest:
            found.append(Checkpoint(int(match.group(1)), str(child)))
    return sorted(found, key=lambda c: c.step)


@dataclass
class _Supervisor:
    """One launch of this task: verl's child processes, one after another."""

    ctx: StageContext
    params: VerlParams
    checkpoint_dir: Path
    learning_rate: float
    process: subprocess.Popen[bytes] | None = None
    reported: set[int] = field(default_factory=set)
    metrics_files: list[str] = field(default_factory=list)
    _stop_tailing: threading.Event | None = None
    _follower: threading.Thread | None = None

    def launch(self, resume_from: str | None) -> None:
        ctx = self.ctx
        metrics_file = self._next_metrics_file()
        launch = Launch(
            checkpoint_dir=str(self.checkpoint_dir),
            experiment=safe_name(ctx.run.job_id),
            gpus=ctx.run.resources.gpus,
            learning_rate=self.learning_rate,
            resume_from=resume_from,
            metrics_file=str(metrics_file),
        )
        argv = command_line(self.params, launch)
        env = {**os.environ, **environment(str(metrics_file))}
        print(f"posttrain: verl launch: {' '.join(argv)}", flush=True)
        self._stop_tailing = threading.Event()
        tailer = MetricsFileTailer(metrics_file, metrics_file.with_suffix(".offset"))
        self._follower = threading.Thread(
            target=follow,
            args=(tailer, ctx.reporter, self._stop_tailing),
            kwargs={"poll_s": 0.5},
            name="verl-metrics-tail",
            daemon=True,
        )
        self._follower.start()
        try:
            # Its own process group: a pause stops verl and everything it started, not us.
            self.process = subprocess.Popen(argv, env=env, process_group=0)
        except OSError as exc:
            self._stop_tailing.set()
            raise StageError(f"verl command {argv[0]!r} cannot start: {exc}") from exc

    def stop(self) -> int | None:
        """SIGTERM to verl's group (SIGKILL after the grace); then the rest of its file."""
        code = None
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                code = self.process.wait(TERMINATE_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                code = self.process.wait()
        self.finish_tailing()
        self.note_checkpoints()
        return code

    def finish_tailing(self) -> None:
        if self._stop_tailing is not None and self._follower is not None:
            self._stop_tailing.set()
            self._follower.join(60)

    def note_checkpoints(self) -> None:
        """Report each checkpoint verl completed since the last look."""
        for checkpoint in checkpoints_in(self.checkpoint_dir):
            if checkpoint.step not in self.reported:
                self.reported.add(checkpoint.step)
                self.ctx.checkpoint_saved(checkpoint.step, checkpoint.path, "scheduled")

    def latest(self) -> Checkpoint | None:
        """The checkpoint verl goes on from: the last one saved on this run's line."""
        return self.ctx.resume_point()

    def _next_metrics_file(self) -> Path:
        path = self.ctx.attempt_dir / f"verl-metrics-{len(list(self._existing()))}.jsonl"
        self.metrics_files.append(str(path))
        return path

    def _existing(self) -> list[Path]:
        return sorted(self.ctx.attempt_dir.glob("verl-metrics-*.jsonl"))


def run_verl(ctx: StageContext) -> dict[str, Any]:
    try:
        params = verl_params(ctx.config)
    except ValidationError as exc:
        problems = "; ".join(
            f"params.config.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise StageError(f"stage {ctx.run.stage!r} on verl: {problems}") from exc
    state_path = ctx.attempt_dir / STATE_FILE
    supervisor = _Supervisor(
        ctx,
        params,
        checkpoint_dir=ctx.job_dir / "verl-checkpoints",
        learning_rate=_saved_rate(state_path) or params.learning_rate,
    )
    # The checkpoints of the line this launch goes on from were reported by earlier launches.
    resume = ctx.resume_from or _retry_checkpoint(ctx, supervisor.checkpoint_dir)
    if resume is not None:
        at = _step_of(resume)
        ctx.checkpoints = [
            c for c in checkpoints_in(supervisor.checkpoint_dir) if at is None or c.step <= at
        ]
        supervisor.reported = {c.step for c in ctx.checkpoints}
    log_size_before = file_size(ctx.attempt_dir / LOG)
    started = time.monotonic()
    supervisor.launch(resume)
    try:
        code = _supervise(ctx, supervisor, state_path)
    finally:
        if supervisor.process is not None and supervisor.process.poll() is None:
            supervisor.stop()  # the stage process is stopping (SIGTERM): verl goes with it
    latest = supervisor.latest()
    outputs: dict[str, Any] = {
        "exit_code": code,
        "checkpoint_dir": str(supervisor.checkpoint_dir),
        "metrics_files": supervisor.metrics_files,
        "learning_rate": supervisor.learning_rate,
        "duration_s": round(time.monotonic() - started, 3),
    }
    if latest is not None:
        outputs["checkpoint"] = latest.path
        outputs["steps"] = latest.step
    if ctx.stop_reason is not None:
        return {"stopped": ctx.stop_reason, "step": ctx.stop_step, **outputs}
    if code != 0:
        raise CommandFailed.from_log("verl", code, ctx.attempt_dir / LOG, log_size_before, outputs)
    return {"algorithm": params.algorithm, "backend": "verl", "resumed_from": resume, **outputs}


def _supervise(ctx: StageContext, supervisor: _Supervisor, state_path: Path) -> int:
    """Wait for verl to end, carrying out control commands meanwhile; verl's exit status."""
    while True:
        assert supervisor.process is not None
        try:
            code = supervisor.process.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            code = None
        supervisor.note_checkpoints()
        if code is not None:
            supervisor.finish_tailing()
            supervisor.note_checkpoints()
            return code
        directive = ctx.poll_control()
        if directive.rollback is not None:
            ctx.action_refused(
                directive.rollback.action_id, "rollback", None, VERL_REFUSALS["rollback"]
            )
        stop = next((a for a in directive.applied if a.action == "cancel"), None) or next(
            (a for a in directive.applied if a.action == "pause"), None
        )
        for applied in directive.applied:
            if applied.action in VERL_REFUSALS:
                ctx.action_refused(
                    applied.action_id, applied.action, None, VERL_REFUSALS[applied.action]
                )
        rate_changes = [a for a in directive.applied if a.action == "adjust_learning_rate"]
        if stop is not None:
            code = supervisor.stop()
            _stopped(ctx, supervisor, stop, rate_changes)
            return code if code is not None else 0
        if rate_changes:
            _relaunch_with_new_rate(ctx, supervisor, rate_changes, state_path)


def _stopped(
    ctx: StageContext, supervisor: _Supervisor, stop: Applied, rate_changes: list[Applied]
) -> None:
    """verl stopped for a pause or a cancel: the stage stands at its last checkpoint."""
    latest = supervisor.latest()
    step = latest.step if latest is not None else 0
    reason = "cancel" if stop.action == "cancel" else "pause"
    ctx.stopping(reason, step)
    details = {
        **stop.details,
        "checkpoint": latest.path if latest is not None else None,
        "resumes_at_step": step + 1,
    }
    ctx.action_applied(Applied(stop.action_id, stop.action, details), step)
    for change in rate_changes:  # verl is not running: the rate applies from the next launch
        ctx.action_refused(
            change.action_id,
            change.action,
            step,
            f"the stage stopped ({reason}) at the same moment; send it again after the resume",
        )


def _relaunch_with_new_rate(
    ctx: StageContext, supervisor: _Supervisor, changes: list[Applied], state_path: Path
) -> None:
    supervisor.stop()
    before = supervisor.learning_rate
    for change in changes:
        supervisor.learning_rate *= float(change.details["factor"])
    _save_rate(state_path, supervisor.learning_rate)
    latest = supervisor.latest()
    step = latest.step if latest is not None else 0
    supervisor.launch(latest.path if latest is not None else None)
    for change in changes:
        details = {
            **change.details,
            "learning_rate": supervisor.learning_rate,
            "previous_learning_rate": before,
            "relaunched_from": latest.path if latest is not None else None,
        }
        ctx.action_applied(Applied(change.action_id, change.action, details), step)


def _retry_checkpoint(ctx: StageContext, checkpoint_dir: Path) -> str | None:
    """A retry (attempt > 1) goes on from the job's latest checkpoint unless told otherwise."""
    if ctx.run.attempt <= 1:
        return None
    found = checkpoints_in(checkpoint_dir)
    return found[-1].path if found else None


def _step_of(path: str) -> int | None:
    match = _STEP_DIR.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def _saved_rate(path: Path) -> float | None:
    try:
        value = json.loads(path.read_text()).get("learning_rate")
    except (FileNotFoundError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def _save_rate(path: Path, rate: float) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"learning_rate": rate}))
    tmp.replace(path)
