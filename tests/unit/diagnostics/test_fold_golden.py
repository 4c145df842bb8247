"""JobState folds every recorded, synthetic and fuzzed series exactly as it did when
data/fold_golden.json was written (anomalies, the state halfway and at the end, bit for bit),
as models and as the stream's msgspec views, and a state restored halfway continues identically
(fold_golden.py)."""

from __future__ import annotations

from tests.unit.diagnostics.fold_golden import check


def test_fold_matches_the_golden_record():
    assert check() == []
