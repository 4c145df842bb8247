"""What a launch of a stage is given: its spec file and its environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from posttrain.events.kafka import KafkaSettings
from posttrain.trainer_agent.core.decide import Start
from posttrain.trainer_agent.core.state import Entry
from posttrain.trainer_agent.reporting import (
    ENV_ATTEMPT,
    ENV_JOB_ID,
    ENV_PIPELINE_ID,
    ENV_STAGE,
)

ENV_COMMAND_ID = "POSTTRAIN_COMMAND_ID"
ENV_AGENT_ID = "POSTTRAIN_AGENT_ID"
# What of a stage's environment says which stage it is: all a stage on another host is given of
# the agent's (``supervisors.ssh``); the rest (the agent host's own variables, its broker and
# spill folder) is this host's.
IDENTITY_VARS: tuple[str, ...] = (
    ENV_JOB_ID,
    ENV_PIPELINE_ID,
    ENV_STAGE,
    ENV_ATTEMPT,
    ENV_COMMAND_ID,
    ENV_AGENT_ID,
    "TOKENIZERS_PARALLELISM",
)


def stage_spec(
    entry: Entry, start: Start, work_dir: Path, settings: KafkaSettings
) -> dict[str, Any]:
    """``spec-<n>.json``: the RunStage, where to resume, where to start reading controls (the
    lines already in the file were applied by an earlier launch)."""
    return {
        "run": entry.run,
        "work_dir": str(work_dir),
        "kafka": {
            "bootstrap_servers": settings.bootstrap_servers,
            "namespace": settings.namespace,
        },
        "resume_from": start.resume_from,
        "resume_action": start.resume_action,
        "resume_step": start.resume_step,
        "control_offset": start.control_offset,
    }


def stage_env(
    entry: Entry,
    gpu_ids: tuple[int, ...],
    *,
    agent_id: str,
    work_dir: Path,
    settings: KafkaSettings,
    extra: tuple[tuple[str, str], ...] = (),
) -> dict[str, str]:
    run = entry.run
    env = dict(os.environ)
    env.update(dict(extra))
    env.update(
        {
            ENV_JOB_ID: str(run["job_id"]),
            ENV_PIPELINE_ID: str(run["pipeline_id"]),
            ENV_STAGE: str(run["stage"]),
            ENV_ATTEMPT: str(run["attempt"]),
            ENV_COMMAND_ID: entry.command_id,
            ENV_AGENT_ID: agent_id,
            "TOKENIZERS_PARALLELISM": "false",
            # The broker, namespace and credentials (a password file rather than the password
            # where there is one): the stage's metrics sender connects as the agent's principal.
            **settings.environment(),
            "POSTTRAIN_SPILL_DIR": str(work_dir / "spill"),
            # A stage sees only the GPUs it was given (none, if it asked for none).
            "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpu_ids),
        }
    )
    return env
