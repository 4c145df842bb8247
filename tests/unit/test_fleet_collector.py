"""The fleet simulator's shards keep the cyclic GC from stalling the hundreds of agents each
plays (``posttrain.testing.fleet.quiet_collector``), checked in a process of its own: the
collector's settings are process-wide."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json
import posttrain.testing.fleet as fleet
before = gc.get_freeze_count()
fleet.quiet_collector()
print(json.dumps({"before": before, "frozen": gc.get_freeze_count(),
                  "threshold": gc.get_threshold()}))
"""


def test_a_shard_hides_what_start_up_built_from_the_collector_and_collects_young_less_often():
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    seen = json.loads(out.stdout)
    assert seen["before"] == 0
    # The imported modules, classes and the simulator's own objects: tens of thousands.
    assert seen["frozen"] > 10_000
    assert seen["threshold"] == [20_000, 20, 20]
