"""Batches close by size or by age; a batch commits the offsets after its last message; memory
is bounded by pausing; the seed's 100 / 30 s is a preset, not the default."""

from __future__ import annotations

import pytest

from posttrain.metrics_ingest.core.batching import (
    DEFAULT_POLICY,
    PRESETS,
    Batcher,
    BatchPolicy,
    preset,
)


def test_a_batch_is_due_when_it_reaches_max_rows() -> None:
    batcher: Batcher[str, str] = Batcher(BatchPolicy(max_rows=10, max_age_s=60))
    batcher.add("p0", 1, "m0", 6, now=0.0)
    assert not batcher.due(0.0)
    batcher.add("p0", 2, "m1", 4, now=0.0)
    assert batcher.due(0.0)


def test_a_batch_is_due_when_its_first_message_is_max_age_old() -> None:
    batcher: Batcher[str, str] = Batcher(BatchPolicy(max_rows=1000, max_age_s=0.5))
    assert not batcher.due(100.0)
    assert batcher.seconds_until_due(100.0) is None
    batcher.add("p0", 1, "m0", 1, now=10.0)
    batcher.add("p0", 2, "m1", 1, now=10.4)
    assert batcher.seconds_until_due(10.4) == pytest.approx(0.1)
    assert not batcher.due(10.49)
    assert batcher.due(10.5)


def test_a_taken_batch_commits_the_offset_after_the_last_message_of_each_partition() -> None:
    batcher: Batcher[str, str] = Batcher(DEFAULT_POLICY)
    batcher.add("p0", 5, "a", 2, now=0.0)
    batcher.add("p1", 8, "b", 3, now=0.0)
    batcher.add("p0", 6, None, 0, now=0.0)  # dead-lettered: no rows, still handled
    batch = batcher.take()
    assert batch.offsets == {"p0": 6, "p1": 8}
    assert batch.items == ["a", "b"]
    assert batch.rows == 5
    assert batcher.empty and batcher.rows == 0 and not batcher.due(1e9)


def test_a_batch_of_only_dead_letters_still_has_offsets_to_commit() -> None:
    batcher: Batcher[str, str] = Batcher(DEFAULT_POLICY)
    batcher.add("p0", 3, None, 0, now=0.0)
    assert not batcher.empty
    assert batcher.take().offsets == {"p0": 3}


def test_revoked_partitions_leave_the_open_batch() -> None:
    batcher: Batcher[str, str] = Batcher(DEFAULT_POLICY)
    batcher.add("p0", 1, "a", 2, now=0.0)
    batcher.add("p1", 1, "b", 3, now=0.0)
    assert batcher.drop_partitions({"p1"}) == 3
    batch = batcher.take()
    assert batch.items == ["a"] and batch.offsets == {"p0": 1} and batch.rows == 2
    assert batcher.drop_partitions({"p9"}) == 0


def test_pause_above_the_bound_and_resume_well_below_it() -> None:
    policy = BatchPolicy(max_rows=100, max_age_s=1, max_pending_rows=1000)
    assert not policy.should_pause(999)
    assert policy.should_pause(1000)
    assert not policy.may_resume(501)
    assert policy.may_resume(500)


def test_the_seed_design_is_a_named_preset_and_not_the_default() -> None:
    seed = preset("seed")
    assert (seed.max_rows, seed.max_age_s) == (100, 30.0)
    assert PRESETS["default"] == DEFAULT_POLICY != seed
    with pytest.raises(ValueError, match="known: default"):
        preset("fast")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_rows": 0},
        {"max_age_s": -1},
        {"max_rows": 100, "max_pending_rows": 10},
    ],
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BatchPolicy(**kwargs)  # type: ignore[arg-type]
