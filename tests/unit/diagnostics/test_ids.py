"""The stable ids are pinned: an anomaly or action id stored or published once must be computed
the same by every later release (the stream, the batch and a restarted stream dedupe on it)."""

from __future__ import annotations

import uuid

from posttrain.diagnostics.core import Anomaly, AnomalyType
from posttrain.diagnostics.core.ids import action_id, anomaly_id, oom_anomaly_id


def test_anomaly_id_is_pinned() -> None:
    assert anomaly_id("job-1", 2, "kl_blowup", 40) == "a393981f-c0cb-5bfe-a515-037202bf859f"


def test_anomaly_id_is_uuid5_of_the_slash_joined_key() -> None:
    namespace = uuid.UUID("6c1f0f5e-4e0b-4b7e-9a53-2c1d7f3f8e11")
    expected = str(uuid.uuid5(namespace, "job-x/0/nan_inf/7"))
    assert anomaly_id("job-x", 0, "nan_inf", 7) == expected
    found = Anomaly(AnomalyType.NON_FINITE, "critical", 7, None, "loss", "m")
    assert found.id_for("job-x") == expected


def test_oom_anomaly_id_is_pinned() -> None:
    assert oom_anomaly_id("job-1", "cmd-7") == "3b22984b-e7c9-57d5-a7ef-fa32dff6cfe2"


def test_action_id_is_pinned_and_differs_by_action() -> None:
    assert action_id("a-1", "rollback") == "f20bac5c-42bf-5261-aae6-47e16977d209"
    assert action_id("a-1", "pause") != action_id("a-1", "rollback")
