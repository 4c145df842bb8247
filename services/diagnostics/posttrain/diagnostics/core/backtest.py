"""Backtesting a detector configuration and action policy on a job's points: what the stream would
have raised, and what it would have asked for, step by step.

The fold is the stream's own: each point through ``JobState.observe`` (with its source and seq),
each anomaly made into the AnomalyDetected the stream emits, each of those through
``policy.decide`` with one ``PolicyState`` per job, and the decision made into the message the
stream sends (``policy.to_message``). So a backtest tells what this configuration would do, not
an imitation of it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from posttrain.diagnostics.core.config import ActionPolicyConfig, PipelineConfig
from posttrain.diagnostics.core.messages import SourcedPoint, detect
from posttrain.diagnostics.core.policy import PolicyState, decide, to_message
from posttrain.diagnostics.core.state import JobState
from posttrain.events.messages.diagnostics import ActionRecommended, AnomalyDetected
from posttrain.events.messages.pipeline import RequestAction

Outcome = Literal["request", "recommend", "none"]
# A point as stored: its source and seq (None for a point without), and the point.


@dataclass(frozen=True, slots=True)
class JobRoute:
    """A job and the pipeline stage its points were reported for (None: not in a pipeline)."""

    job_id: str
    pipeline_id: str | None = None
    stage: str | None = None
    attempt: int | None = None


@dataclass(frozen=True, slots=True)
class BacktestStep:
    """One anomaly and what the policy would have done about it.

    ``outcome``: ``request`` (a RequestAction to the orchestrator), ``recommend`` (an
    ActionRecommended: dry run, or no pipeline stage to act on) or ``none`` (``note`` says
    why)."""

    anomaly: AnomalyDetected
    outcome: Outcome
    action: RequestAction | ActionRecommended | None
    note: str

    @property
    def step(self) -> int:
        return self.anomaly.step

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.anomaly.step,
            "anomaly": _plain(self.anomaly),
            "outcome": self.outcome,
            "action": None if self.action is None else _plain(self.action),
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class JobBacktest:
    route: JobRoute
    points: int
    steps: tuple[BacktestStep, ...]

    def anomaly_counts(self) -> Counter[str]:
        return Counter(s.anomaly.anomaly_type for s in self.steps)

    def action_counts(self) -> Counter[str]:
        return Counter(f"{s.outcome} {s.action.action}" for s in self.steps if s.action is not None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.route.job_id,
            "pipeline_id": self.route.pipeline_id,
            "stage": self.route.stage,
            "attempt": self.route.attempt,
            "points": self.points,
            "anomalies": dict(sorted(self.anomaly_counts().items())),
            "actions": dict(sorted(self.action_counts().items())),
            "steps": [s.to_dict() for s in self.steps],
        }


def backtest_job(
    route: JobRoute, points: Iterable[SourcedPoint], config: PipelineConfig
) -> JobBacktest:
    """Fold the job's points (in emission order) as the stream would, with ``config``."""
    state = JobState(config.detectors)
    policy = PolicyState()
    count = 0

    def counted() -> Iterator[SourcedPoint]:
        nonlocal count
        for sourced in points:
            count += 1
            yield sourced

    events = detect(
        state,
        route.job_id,
        counted(),
        pipeline_id=route.pipeline_id,
        stage=route.stage,
        attempt=route.attempt,
    )
    steps = tuple(_act(event, config.actions, policy) for event in events)
    return JobBacktest(route, count, steps)


def _act(event: AnomalyDetected, config: ActionPolicyConfig, policy: PolicyState) -> BacktestStep:
    decision = decide(event, config, policy)
    if decision is None:
        return BacktestStep(event, "none", None, _why_not(event, config))
    message = to_message(event, decision)
    if isinstance(message, RequestAction):
        return BacktestStep(event, "request", message, describe(message))
    return BacktestStep(event, "recommend", message, message.reason)


def _why_not(event: AnomalyDetected, config: ActionPolicyConfig) -> str:
    """Why ``decide`` took no action (it says only that it took none)."""
    if not config.enabled:
        return "actions are disabled"
    if config.rules.get(event.anomaly_type) is None:
        return "no action rule for this anomaly type"
    return "within the rule's cooldown"


def describe(action: RequestAction | ActionRecommended) -> str:
    """The action's parameters as a person reads them."""
    parts: list[str] = []
    if action.factor is not None:
        parts.append(f"x{action.factor:g}")
    if isinstance(action, RequestAction):
        if action.rollback_steps is not None:
            parts.append(f"back {action.rollback_steps} steps")
        if action.skip_batches is not None:
            parts.append(f"skip {action.skip_batches} batches")
    return ", ".join(parts)


def _plain(message: AnomalyDetected | RequestAction | ActionRecommended) -> dict[str, Any]:
    # The events' own JSON (NaN and infinities as strings), as plain values.
    value: dict[str, Any] = orjson.loads(message.model_dump_json())
    return value


def fmt_value(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"
