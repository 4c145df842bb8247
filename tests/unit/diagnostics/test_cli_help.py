"""``posttrain-diagnostics --help`` prints its usage and starts nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_help_prints_usage_and_creates_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "POSTTRAIN_HOME": str(tmp_path), "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    result = subprocess.run(
        [sys.executable, "-m", "posttrain.diagnostics.stream", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.lower().startswith("usage: posttrain-diagnostics")
    assert "POSTTRAIN_DIAGNOSTICS_CONFIG" in result.stdout
    assert list(tmp_path.iterdir()) == []  # no data directory, no topics asked for
