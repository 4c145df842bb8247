"""What diagnostics keeps of anomaly and action events."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from posttrain.diagnostics.core.ids import action_id
from posttrain.diagnostics.core.records import (
    InvalidRecord,
    action_record,
    anomaly_record,
    recommended_action,
)
from posttrain.events.messages.diagnostics import ActionRecommended, AnomalyDetected
from posttrain.events.messages.pipeline import ActionRequested
from posttrain.events.messages.stage import ActionApplied

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_an_anomaly_record_keeps_the_event_and_its_time():
    event = AnomalyDetected(
        anomaly_id="a-1",
        job_id="job",
        anomaly_type="nan_inf",
        severity="critical",
        step=45,
        value=math.nan,
        message="non-finite values at step 45: grad_norm=nan",
        suggestions=["pause"],
        window={"non_finite_grad_norm": 1.0},
        pipeline_id="p",
        stage="sft",
        attempt=2,
        emitted_at=1.7e9,
    )
    record = anomaly_record(event, event_id="e-1", occurred_at=AT)
    assert (record.anomaly_id, record.job_id, record.step, record.attempt) == ("a-1", "job", 45, 2)
    assert math.isnan(record.value)
    assert record.detected_at == AT and record.event_id == "e-1"
    assert record.emitted_at == datetime.fromtimestamp(1.7e9, UTC)
    assert record.suggestions == ("pause",)


def test_each_action_event_fills_its_part_of_the_action():
    requested = ActionRequested(
        action_id="x-1",
        pipeline_id="p",
        stage="sft",
        attempt=1,
        action="adjust_learning_rate",
        factor=0.1,
        reason="grad_explosion at step 49",
        anomaly_id="a-2",
    )
    record = action_record("ActionRequested", requested.model_dump(), occurred_at=AT)
    assert (record.action_id, record.anomaly_id, record.factor) == ("x-1", "a-2", 0.1)
    assert record.requested_at == AT and record.applied_at is None

    applied = ActionApplied(
        pipeline_id="p",
        stage="sft",
        attempt=1,
        command_id="c",
        agent_id="gpu-1",
        job_id="job",
        action_id="x-1",
        action="adjust_learning_rate",
        step=50,
        details={"learning_rate": 1e-5},
    )
    record = action_record("ActionApplied", applied.model_dump(), occurred_at=AT)
    assert record.applied_at == AT and record.applied_step == 50
    assert record.applied_details == {"learning_rate": 1e-5}
    assert record.anomaly_id is None and record.requested_at is None


def test_a_refusal_is_read_by_its_fields_whatever_the_library_knows():
    fields = {
        "action_id": "x-3",
        "pipeline_id": "p",
        "stage": "verl",
        "attempt": 1,
        "action": "rollback",
        "reason": "stage verl (task command) cannot roll back",
        "anomaly_id": "a-3",
        "a_field_added_later": [1, 2],
    }
    record = action_record("ActionRefused", fields, occurred_at=AT)
    assert record.refused_at == AT
    assert record.refusal == "stage verl (task command) cannot roll back"
    assert record.reason is None  # the refusal's reason is not the request's


def test_a_recommendation_gets_the_id_a_request_would_have():
    event = ActionRecommended(anomaly_id="a-4", job_id="job", action="pause", reason="dry run")
    record = recommended_action(event, occurred_at=AT)
    assert record.action_id == action_id("a-4", "pause")
    assert record.recommended_at == AT and record.requested_at is None


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"action": "pause"}, "action_id"),
        ({"action_id": "x", "action": 3}, "action"),
        ({"action_id": "x", "action": "pause", "attempt": "1"}, "attempt"),
    ],
)
def test_an_action_event_that_cannot_make_a_record_says_which_field(fields, named):
    with pytest.raises(InvalidRecord, match=rf"ActionRefused\.{named}"):
        action_record("ActionRefused", fields, occurred_at=AT)
