"""posttrain.testing.waiting: the harnesses' and benchmarks' one poll-with-a-deadline."""

from __future__ import annotations

import pytest

from posttrain.testing.waiting import wait_until


async def test_returns_once_an_async_predicate_holds() -> None:
    calls = []

    async def third_time() -> bool:
        calls.append(1)
        return len(calls) >= 3

    await wait_until(third_time, timeout=5, interval=0.001, what="the third call")
    assert len(calls) == 3


async def test_fails_naming_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match="waiting for the shards"):
        await wait_until(lambda: False, timeout=0.05, interval=0.01, what="the shards")


async def test_the_value_that_held_is_returned() -> None:
    assert await wait_until(lambda: {"ready": 1}, timeout=1, interval=0.01, what="x") == {
        "ready": 1
    }
