"""The collector policy a long-running process sets at its start
(``posttrain.service.collector.quiet_collector``), checked in processes of their own: the
collector's settings are process-wide."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import gc, json, sys
import posttrain.testing.fleet  # a stand-in's start-up: the simulator and what it imports
from posttrain.service.collector import quiet_collector
before = gc.get_freeze_count()
quiet_collector((20_000, 20, 20), freeze=sys.argv[1] == "freeze")
print(json.dumps({"before": before, "frozen": gc.get_freeze_count(),
                  "threshold": gc.get_threshold()}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(out.stdout)


@pytest.mark.parametrize("mode", ["freeze", "keep"])
def test_the_thresholds_are_set_and_start_up_frozen_only_when_asked(mode):
    seen = _probe(mode)
    assert seen["before"] == 0
    assert seen["threshold"] == [20_000, 20, 20]
    if mode == "freeze":
        # The imported modules, classes and the simulator's own objects: tens of thousands.
        assert seen["frozen"] > 10_000
    else:
        assert seen["frozen"] == 0
