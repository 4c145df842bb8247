"""The action policy and the alert formats, signatures and dedup, without I/O."""

from __future__ import annotations

import base64
import hashlib
import hmac

from posttrain.diagnostics.core.alerting import (
    Alert,
    AlertDedup,
    backoff_delays,
    build_request,
    feishu_sign,
    response_ok,
    route,
)
from posttrain.diagnostics.core.config import (
    ActionPolicyConfig,
    ActionRule,
    AlertChannel,
    AlertConfig,
)
from posttrain.diagnostics.core.ids import action_id
from posttrain.diagnostics.core.policy import PolicyState, decide, to_message
from posttrain.events.messages.diagnostics import ActionRecommended, AnomalyDetected
from posttrain.events.messages.pipeline import RequestAction


def anomaly(kind: str, step: int, anomaly_id: str | None = None, **extra) -> AnomalyDetected:
    fields = {
        "anomaly_id": anomaly_id or f"{kind}-{step}",
        "job_id": "job-1",
        "anomaly_type": kind,
        "severity": "critical",
        "step": step,
        "value": 1.0,
        "message": f"{kind} at {step}",
        "pipeline_id": "p-1",
        "stage": "grpo",
        "attempt": 2,
    }
    fields.update(extra)
    return AnomalyDetected(**fields)


def requested(kind: str, step: int, config: ActionPolicyConfig, state: PolicyState):
    a = anomaly(kind, step)
    decision = decide(a, config, state)
    return None if decision is None else to_message(a, decision)


def test_default_policy_from_the_seed_and_the_issue():
    config, state = ActionPolicyConfig(), PolicyState()
    pause = requested("nan_inf", 10, config, state)
    assert isinstance(pause, RequestAction)
    assert (pause.action, pause.pipeline_id, pause.stage, pause.attempt, pause.step) == (
        "pause",
        "p-1",
        "grpo",
        2,
        10,
    )
    assert pause.action_id == action_id("nan_inf-10", "pause")
    cut = requested("grad_explosion", 20, config, state)
    assert (cut.action, cut.factor) == ("adjust_learning_rate", 0.1)
    checkpoint = requested("new_best_reward", 30, config, state)
    assert checkpoint.action == "force_checkpoint"
    rollback = requested("loss_spike", 40, config, state)
    assert (rollback.action, rollback.rollback_steps, rollback.skip_batches) == (
        "rollback",
        100,
        300,
    )
    assert requested("kl_blowup", 50, config, state) is None  # alert only


def test_cooldown_in_steps_and_redelivery():
    config, state = ActionPolicyConfig(), PolicyState()
    assert requested("grad_explosion", 100, config, state) is not None
    assert requested("grad_explosion", 150, config, state) is None  # within 100 steps
    assert requested("grad_explosion", 200, config, state) is not None
    # Steps went back (a rollback): the cooldown does not block the new timeline.
    assert requested("grad_explosion", 120, config, state) is not None
    again = anomaly("nan_inf", 7)
    assert decide(again, config, state) is not None
    assert decide(again, config, state) is None  # the same anomaly id twice
    restored = PolicyState(state.to_dict())
    assert decide(again, config, restored) is None


def test_dry_run_and_missing_pipeline_only_recommend_and_rules_can_be_changed():
    dry = ActionPolicyConfig(dry_run=True)
    message = requested("nan_inf", 3, dry, PolicyState())
    assert isinstance(message, ActionRecommended) and message.action == "pause"
    orphan = anomaly("nan_inf", 3, pipeline_id=None, stage=None, attempt=None)
    decision = decide(orphan, ActionPolicyConfig(), PolicyState())
    recommended = to_message(orphan, decision)
    assert isinstance(recommended, ActionRecommended)
    assert recommended.reason.startswith("no pipeline stage")
    custom = ActionPolicyConfig(
        rules={"nan_inf": None, "kl_blowup": ActionRule(action="adjust_learning_rate", factor=0.5)}
    )
    assert requested("nan_inf", 1, custom, PolicyState()) is None
    assert requested("kl_blowup", 1, custom, PolicyState()).factor == 0.5
    assert requested("nan_inf", 1, ActionPolicyConfig(enabled=False), PolicyState()) is None


ALERT = Alert(job_id="j", anomaly_type="nan_inf", message="loss=nan", severity="critical", step=4)


def test_feishu_signature_follows_the_documented_scheme():
    # Feishu: base64(HMAC-SHA256(key=f"{timestamp}\n{secret}", msg=b"")).
    expected = base64.b64encode(
        hmac.new(b"1599360473\ndemo", b"", hashlib.sha256).digest()
    ).decode()
    assert feishu_sign(1599360473, "demo") == expected
    channel = AlertChannel(name="f", kind="feishu", url="http://x", secret="demo")
    body = build_request(channel, ALERT, 1599360473).body
    assert b'"timestamp":"1599360473"' in body and expected.encode() in body


def test_response_codes_retry_and_feishu_errors():
    slack = AlertChannel(name="s", kind="slack", url="http://x")
    feishu = AlertChannel(name="f", kind="feishu", url="http://x")
    assert response_ok(slack, 200, b"ok") == (True, False, "")
    assert response_ok(slack, 500, b"")[:2] == (False, True)
    assert response_ok(slack, 429, b"")[:2] == (False, True)
    assert response_ok(slack, 400, b"invalid_payload")[:2] == (False, False)
    assert response_ok(feishu, 200, b'{"code": 0}')[0]
    assert response_ok(feishu, 200, b'{"code": 19021, "msg": "sign"}')[:2] == (False, False)
    assert backoff_delays(AlertConfig(max_attempts=4, backoff_s=0.5)) == [0.5, 1.0, 2.0]


def test_routing_by_severity_and_type():
    config = AlertConfig(
        channels=(
            AlertChannel(name="all", kind="slack", url="http://a", min_severity="info"),
            AlertChannel(name="pager", kind="webhook", url="http://b", min_severity="critical"),
            AlertChannel(name="nan", kind="webhook", url="http://c", types=("nan_inf",)),
        )
    )
    assert [c.name for c in route(config, "critical", "nan_inf")] == ["all", "pager", "nan"]
    assert [c.name for c in route(config, "warning", "loss_spike")] == ["all"]
    assert [c.name for c in route(config, "info", "new_best_reward")] == ["all"]


def test_dedup_cooldown_counts_what_it_held_back_and_survives_serialization():
    dedup = AlertDedup()
    assert dedup.decide("nan_inf", 0.0, 60, "a1") == (True, 0)
    assert dedup.decide("nan_inf", 10.0, 60, "a2") == (False, 0)
    assert dedup.decide("nan_inf", 20.0, 60, "a3") == (False, 0)
    restored = AlertDedup(dedup.to_dict())
    assert restored.decide("nan_inf", 30.0, 60, "a1") == (False, 0)  # already handled
    assert restored.decide("loss_spike", 30.0, 60, "b1") == (True, 0)
    assert restored.decide("nan_inf", 61.0, 60, "a4") == (True, 2)
