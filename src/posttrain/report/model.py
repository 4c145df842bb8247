"""What a run report holds, as plain frozen data (no I/O): built by ``collect``, drawn by
``page`` and ``charts``, and built by hand from recorded points in the tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

# The charted fields (MetricPoint's canonical names) and their titles, in panel order.
CHART_FIELDS: tuple[tuple[str, str], ...] = (
    ("loss", "loss"),
    ("reward_mean", "reward"),
    ("kl_divergence", "KL"),
    ("grad_norm", "gradient norm"),
)

# Tasks whose metric points are not training steps.
CHARTLESS_TASKS = frozenset({"run_evaluation"})


@dataclass(frozen=True, slots=True)
class Marker:
    """Something diagnostics saw (``anomaly``) or did (``action``) at a step of a stage."""

    step: int
    kind: Literal["anomaly", "action"]
    label: str


@dataclass(frozen=True, slots=True)
class StageRun:
    """One stage of the pipeline as it ended, with its job's charted series (field -> (step,
    value) in step order; a field the stage never logged is absent) and its markers."""

    name: str
    task: str
    status: str
    attempt: int = 1
    agent_id: str | None = None
    job_id: str | None = None
    seconds: float | None = None
    series: Mapping[str, Sequence[tuple[int, float]]] = field(default_factory=dict)
    markers: Sequence[Marker] = ()

    @property
    def charted(self) -> bool:
        """Whether the stage gets a chart: a stage with charted points other than an
        evaluation (whose points are one per model evaluated, not steps; its table shows
        them)."""
        return self.task not in CHARTLESS_TASKS and any(
            self.series.get(name) for name, _ in CHART_FIELDS
        )


@dataclass(frozen=True, slots=True)
class EvaluationRow:
    """One evaluated model: the stage whose checkpoint it is, and its figures on the held-out
    prompts (None where the evaluation did not measure it)."""

    stage: str
    model: str
    accuracy: float | None
    reward: float | None
    loss: float | None


@dataclass(frozen=True, slots=True)
class Improvement:
    """How one stage's evaluated model compares with the baseline's (the SFT model)."""

    stage: str
    baseline: str
    accuracy: float
    baseline_accuracy: float
    reward: float
    baseline_reward: float

    @property
    def improved(self) -> bool:
        """Both reward and accuracy strictly above the baseline's."""
        return self.accuracy > self.baseline_accuracy and self.reward > self.baseline_reward

    def describe(self) -> str:
        word = "above" if self.improved else "NOT above"
        return (
            f"{self.stage}: accuracy {self.accuracy:.2f} vs {self.baseline_accuracy:.2f}, "
            f"reward {self.reward:.3f} vs {self.baseline_reward:.3f} ({word} {self.baseline})"
        )


@dataclass(frozen=True, slots=True)
class RunReport:
    """Everything the page shows about one pipeline run."""

    pipeline_id: str
    name: str
    status: str
    stages: Sequence[StageRun]
    evaluation: Sequence[EvaluationRow] = ()
    baseline: str | None = None
    web_url: str | None = None


def improvements(rows: Sequence[EvaluationRow], baseline: str) -> list[Improvement]:
    """Each evaluated stage other than ``baseline`` against it (rows without accuracy or reward
    are left out). Empty when the baseline was not evaluated."""
    base = next((r for r in rows if r.stage == baseline), None)
    if base is None or base.accuracy is None or base.reward is None:
        return []
    return [
        Improvement(r.stage, baseline, r.accuracy, base.accuracy, r.reward, base.reward)
        for r in rows
        if r.stage != baseline and r.accuracy is not None and r.reward is not None
    ]
