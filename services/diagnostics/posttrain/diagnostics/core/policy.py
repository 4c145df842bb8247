"""The automatic-action policy: anomaly -> the action to ask the orchestrator for.

Defaults (SEED.md and the issue): NaN -> pause; gradient explosion -> learning rate x0.1 with a
cooldown; new best reward -> force a checkpoint; loss spike -> roll back ~100 steps and skip the
offending data (PaLM). A cooldown is counted in training steps, so replaying the same anomalies
decides the same way. Dry-run mode recommends instead of requesting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from posttrain.diagnostics.core.config import ActionKind, ActionPolicyConfig
from posttrain.diagnostics.core.ids import action_id
from posttrain.events.messages.diagnostics import ActionRecommended, AnomalyDetected
from posttrain.events.messages.pipeline import RequestAction

JsonDict = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Decision:
    action: ActionKind
    reason: str
    factor: float | None = None
    rollback_steps: int | None = None
    skip_batches: int | None = None
    dry_run: bool = False


class PolicyState:
    """Per job: the step (and generation) of the last action each rule took, and the anomaly
    ids already acted on. JSON-able."""

    MAX_IDS = 64

    def __init__(self, data: JsonDict | None = None) -> None:
        data = data or {}
        self.last: dict[str, list[int]] = {
            k: [int(v[0]), int(v[1])] for k, v in data.get("last", {}).items()
        }
        self.handled: list[str] = [str(x) for x in data.get("handled", [])]

    def to_dict(self) -> JsonDict:
        return {"last": {k: list(v) for k, v in self.last.items()}, "handled": list(self.handled)}


def decide(
    anomaly: AnomalyDetected, config: ActionPolicyConfig, state: PolicyState, generation: int = 0
) -> Decision | None:
    """The action this anomaly calls for, or None (no rule, cooldown, already handled)."""
    if not config.enabled:
        return None
    rule = config.rules.get(anomaly.anomaly_type)
    if rule is None:
        return None
    if anomaly.anomaly_id in state.handled:
        return None
    state.handled = [*state.handled[-(state.MAX_IDS - 1) :], anomaly.anomaly_id]
    last = state.last.get(anomaly.anomaly_type)
    if (
        last is not None
        and rule.cooldown_steps
        and last[1] == generation
        and 0 <= anomaly.step - last[0] < rule.cooldown_steps
    ):
        return None
    state.last[anomaly.anomaly_type] = [anomaly.step, generation]
    reason = f"{anomaly.anomaly_type} at step {anomaly.step}: {anomaly.message}"
    return Decision(
        action=rule.action,
        reason=reason[:500],
        factor=rule.factor,
        rollback_steps=rule.rollback_steps,
        skip_batches=rule.skip_batches,
        dry_run=config.dry_run,
    )


def to_message(anomaly: AnomalyDetected, decision: Decision) -> RequestAction | ActionRecommended:
    """A RequestAction for the orchestrator, or an ActionRecommended in dry-run mode or when the
    anomaly names no pipeline stage to act on."""
    if (
        decision.dry_run
        or anomaly.pipeline_id is None
        or anomaly.stage is None
        or anomaly.attempt is None
    ):
        reason = decision.reason
        if not decision.dry_run:
            reason = "no pipeline stage to act on: " + reason
        return ActionRecommended(
            anomaly_id=anomaly.anomaly_id,
            job_id=anomaly.job_id,
            action=decision.action,
            reason=reason[:500],
            factor=decision.factor,
        )
    return RequestAction(
        action_id=action_id(anomaly.anomaly_id, decision.action),
        pipeline_id=anomaly.pipeline_id,
        stage=anomaly.stage,
        attempt=anomaly.attempt,
        action=decision.action,
        factor=decision.factor,
        reason=decision.reason,
        anomaly_id=anomaly.anomaly_id,
        step=anomaly.step,
        rollback_steps=decision.rollback_steps,
        skip_batches=decision.skip_batches,
    )
