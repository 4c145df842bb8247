"""The stage process's own testimony that it started a task: one JSON line per start, appended
to ``$POSTTRAIN_STAGE_WITNESS_DIR/witness.jsonl``.

Off unless that variable names a directory. The resilience suite (tests/chaos) sets it to check
that no (stage, attempt) ran twice from what the processes themselves did, not only from the
events the platform wrote about them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from posttrain.events.messages import RunStage

ENV_WITNESS_DIR = "POSTTRAIN_STAGE_WITNESS_DIR"
WITNESS_FILE = "witness.jsonl"


def witness_start(run: RunStage, launch: int, resume_from: str | None) -> None:
    """Append this process's start of ``run`` (launch ``launch``) to the witness file, if asked.

    One ``write`` of one line on an O_APPEND descriptor: lines from stage processes running at
    once never interleave, and a line is on disk before the task begins (fsync), so a kill -9
    right after cannot erase the start it records."""
    directory = os.environ.get(ENV_WITNESS_DIR)
    if not directory:
        return
    line = json.dumps(
        {
            "pipeline_id": run.pipeline_id,
            "stage": run.stage,
            "attempt": run.attempt,
            "command_id": run.command_id,
            "job_id": run.job_id,
            "agent_id": run.agent_id,
            "launch": launch,
            "resume_from": resume_from,
            "pid": os.getpid(),
            "started_at": time.time(),
        }
    )
    path = Path(directory) / WITNESS_FILE
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_witness(directory: Path) -> list[dict[str, object]]:
    """Every start recorded under ``directory`` (none if no stage started)."""
    path = directory / WITNESS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
