"""What a rule raises: an anomaly with its type, severity, step, value, the window statistics
that triggered it, a message a person can act on, and suggestions (METRICS.md's remedies)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from posttrain.diagnostics.core.ids import anomaly_id
from posttrain.events.messages.diagnostics import Severity


class AnomalyType(StrEnum):
    NON_FINITE = "nan_inf"
    LOSS_SPIKE = "loss_spike"
    KL_BLOWUP = "kl_blowup"
    KL_SATURATED = "kl_saturated"
    REWARD_SPIKE = "reward_spike"
    REWARD_DROP = "reward_drop"
    REWARD_COLLAPSE = "reward_collapse"
    GRAD_EXPLOSION = "grad_explosion"
    GRAD_VANISHING = "grad_vanishing"
    LOSS_PLATEAU = "loss_plateau"
    ENTROPY_COLLAPSE = "entropy_collapse"
    LENGTH_EXPLOSION = "length_explosion"
    LENGTH_COLLAPSE = "length_collapse"
    GPU_OOM = "gpu_oom"
    GPU_MEMORY_PRESSURE = "gpu_memory_pressure"
    NEW_BEST_REWARD = "new_best_reward"


SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}

SUGGESTIONS: dict[AnomalyType, tuple[str, ...]] = {
    AnomalyType.NON_FINITE: (
        "Pause the run and roll back to the last good checkpoint.",
        "Lower the learning rate (x0.1) before resuming.",
        "Check the batch at this step for empty or corrupt samples; enable gradient clipping.",
    ),
    AnomalyType.LOSS_SPIKE: (
        "Roll back ~100 steps to the last good checkpoint and skip 200-500 batches (PaLM).",
        "Lower the learning rate.",
    ),
    AnomalyType.KL_BLOWUP: (
        "Raise the KL coefficient (beta).",
        "Lower the learning rate.",
        "Use fewer PPO epochs per batch.",
    ),
    AnomalyType.KL_SATURATED: (
        "The KL estimate sits at its clamp: the policy has drifted far from the reference; "
        "raise the KL coefficient or roll back.",
    ),
    AnomalyType.REWARD_SPIKE: (
        "Check the reward function for hacking (inspect the high-reward samples).",
    ),
    AnomalyType.REWARD_DROP: (
        "Check the reward function and the data at this step.",
        "Lower the learning rate.",
    ),
    AnomalyType.REWARD_COLLAPSE: (
        "Most groups have zero reward variance: no learning signal. Use dynamic sampling "
        "(DAPO) or harder prompts.",
        "Check the reward function.",
    ),
    AnomalyType.GRAD_EXPLOSION: (
        "Lower the learning rate (x0.1).",
        "Clip gradients (e.g. max_grad_norm=1.0).",
    ),
    AnomalyType.GRAD_VANISHING: (
        "Check the learning-rate schedule (warm-up, decay to 0).",
        "Check for frozen parameters or a detached loss.",
    ),
    AnomalyType.LOSS_PLATEAU: (
        "Lower the learning rate (x0.1).",
        "Consider early stopping.",
    ),
    AnomalyType.ENTROPY_COLLAPSE: (
        "Use clip-higher (DAPO eps_high 0.28) or an entropy bonus.",
        "Raise the sampling temperature.",
    ),
    AnomalyType.LENGTH_EXPLOSION: (
        "Add an overlong punishment (DAPO); use a token-level loss.",
        "Check for repetition loops in samples.",
    ),
    AnomalyType.LENGTH_COLLAPSE: (
        "Check the reward function for a bias toward short answers; use a token-level loss.",
    ),
    AnomalyType.GPU_OOM: (
        "Use a smaller micro-batch (and more gradient accumulation).",
        "Enable gradient checkpointing.",
        "Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True.",
    ),
    AnomalyType.GPU_MEMORY_PRESSURE: (
        "Use a smaller micro-batch before it runs out of memory.",
        "Enable gradient checkpointing.",
        "Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True.",
    ),
    AnomalyType.NEW_BEST_REWARD: ("Checkpoint this step: it is the best reward so far.",),
}


@dataclass(frozen=True, slots=True)
class Anomaly:
    anomaly_type: AnomalyType
    severity: Severity
    step: int
    value: float | None
    field: str
    message: str
    window: Mapping[str, float] = dataclasses.field(default_factory=dict)
    suggestions: tuple[str, ...] = ()
    generation: int = 0  # how many times this job's steps went backwards (rollback/resume)

    @property
    def key(self) -> tuple[str, int, int]:
        """What identifies an anomaly within a job: (type, generation, step)."""
        return (self.anomaly_type.value, self.generation, self.step)

    def id_for(self, job_id: str) -> str:
        return anomaly_id(job_id, self.generation, self.anomaly_type.value, self.step)

    def to_dict(self) -> dict[str, Any]:
        return {
            "anomaly_type": self.anomaly_type.value,
            "severity": self.severity,
            "step": self.step,
            "value": self.value,
            "field": self.field,
            "message": self.message,
            "window": dict(self.window),
            "suggestions": list(self.suggestions),
            "generation": self.generation,
        }


def make(
    anomaly_type: AnomalyType,
    severity: Severity,
    step: int,
    value: float | None,
    field: str,
    message: str,
    window: Mapping[str, float] | None = None,
) -> Anomaly:
    return Anomaly(
        anomaly_type=anomaly_type,
        severity=severity,
        step=step,
        value=value,
        field=field,
        message=message,
        window={k: v for k, v in (window or {}).items() if math.isfinite(v)},
        suggestions=SUGGESTIONS[anomaly_type],
    )


def fmt(value: float) -> str:
    """A number as a person reads it in an alert."""
    if not math.isfinite(value):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.3e}"


def oom_anomaly(error: str | None, *, step: int | None) -> Anomaly:
    """The gpu_oom anomaly of an attempt that ran out of GPU memory, with its error's first
    line; ``step``: the step it failed near, None where unknown (it is raised at step 0)."""
    text = (error or "").strip()
    first_line = text.splitlines()[0][:300] if text else "out of memory"
    near = f" near step {step}" if step is not None else ""
    return make(
        AnomalyType.GPU_OOM,
        "critical",
        step or 0,
        None,
        "failure",
        f"the stage ran out of GPU memory{near}: {first_line}",
    )
