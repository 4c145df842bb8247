"""What the training callback leaves in the training process between two sends: queued steps
that the process's cyclic garbage collector does not have to walk."""

from __future__ import annotations

import gc
import socket
from dataclasses import replace
from pathlib import Path

from posttrain.events.kafka import KafkaSettings
from posttrain.trainer_agent.reporting import ReporterOptions, create_training_callback


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket is closed


def test_queued_steps_are_untracked_by_the_young_garbage_collections(
    tmp_path: Path,
) -> None:
    """A training loop logs plain numbers; the steps waiting for the sender hold nothing the
    collector must follow, so the young collections untrack them instead of promoting
    thousands of objects into the old generation (whose full collections the training thread
    pays for)."""
    settings = replace(KafkaSettings.from_env(), bootstrap_servers=_closed_port())
    # A long linger: the steps stay queued while this test looks at them.
    report = create_training_callback(
        "job-gc", settings=settings, spill_dir=tmp_path, options=ReporterOptions(linger_s=60)
    )
    # No automatic collection meanwhile: the steps are all young when the test collects.
    gc.disable()
    try:
        for step in range(500):
            report(step=step, epoch=step / 100, loss=1.0 / (step + 1), my_metric=float(step))
        queued = list(report._queue)
        assert len(queued) == 500
        assert all(gc.is_tracked(item) for item in queued)
        # The two young collections an object meets before it is moved to the old generation.
        gc.collect(0)
        gc.collect(1)
        assert not any(gc.is_tracked(item) for item in queued)
    finally:
        gc.enable()
        # Unreachable broker: the steps go to the spill file, nothing is lost.
        assert report.close(timeout=30) == 500
