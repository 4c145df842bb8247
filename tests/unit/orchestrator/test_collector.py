"""The cyclic GC pause: nested and interleaved pauses (a catch-up batch while partitions
replay, in one event loop) leave the collector off while any holds and as it was after all."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from posttrain.orchestrator.shell.collector import cyclic_gc_paused


@pytest.fixture
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_interleaved_pauses_keep_it_off_until_the_last_ends(collector_on: None) -> None:
    first, second = cyclic_gc_paused(), cyclic_gc_paused()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first to begin ends first: the second still holds
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off(collector_on: None) -> None:
    gc.disable()
    with cyclic_gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_on_again_after_a_failure_inside(collector_on: None) -> None:
    with pytest.raises(RuntimeError), cyclic_gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()
