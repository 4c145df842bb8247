"""The rules' saved state, declared once (``saved_state``): defaults, upcasts, and a saved
state that no longer moves with the rule."""

from __future__ import annotations

import json

from posttrain.diagnostics.core.anomaly import Anomaly
from posttrain.diagnostics.core.config import DetectorConfig
from posttrain.diagnostics.core.detectors import MemoryRule, NonFiniteRule, build_rules
from posttrain.events.messages.metrics import MetricPoint


def test_an_empty_state_restores_every_rule_to_its_start_and_saves_it_as_json() -> None:
    rules = build_rules(DetectorConfig(), {})
    saved = {rule.name: rule.to_dict() for rule in rules}
    assert json.loads(json.dumps(saved, allow_nan=False)) == saved
    again = {rule.name: rule.to_dict() for rule in build_rules(DetectorConfig(), saved)}
    assert again == saved
    assert saved["non_finite"] == {"named": []}
    assert saved["reward"]["direction"] == 0 and saved["reward"]["collapse_run"] == 0
    assert saved["new_best_reward"] == {
        "recent": [],
        "seen": 0,
        "best": None,
        "last_raised_step": None,
    }


def test_a_non_finite_state_saved_before_fields_were_named_is_upcast() -> None:
    cfg = DetectorConfig().non_finite
    assert NonFiniteRule(cfg, {"active": True}).named == ["*"]
    assert NonFiniteRule(cfg, {"active": False}).named == []
    assert NonFiniteRule(cfg, {"named": ["loss"]}).named == ["loss"]


def test_a_saved_state_is_a_copy_that_later_points_do_not_change() -> None:
    rule = MemoryRule(DetectorConfig().memory, {})
    out: list[Anomaly] = []
    rule.observe(MetricPoint(step=1, timestamp=1.0, custom={"num_ooms": 1.0}), None, out)
    saved = rule.to_dict()
    rule.observe(MetricPoint(step=2, timestamp=2.0, custom={"num_ooms": 2.0}), None, out)
    assert saved["counters"] == {"num_ooms": 1.0}
    assert rule.to_dict()["counters"] == {"num_ooms": 2.0}
