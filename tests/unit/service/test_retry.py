"""The shells' retry: transient failures are retried until the call succeeds, each one counted
through ``on_failure``; any other failure, and cancellation, goes through at once."""

from __future__ import annotations

import asyncio

import pytest
from tenacity import RetryCallState, wait_none

from posttrain.service.retry import backoff, retrying


class Flaky:
    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self, value: int) -> int:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return value * 2


async def test_transient_failures_are_retried_until_it_works():
    flaky = Flaky([ConnectionError("away"), ConnectionError("still away")])
    seen: list[BaseException] = []

    async def on_failure(exc: BaseException) -> None:
        seen.append(exc)

    result = await retrying(
        "the flaky call", transient=ConnectionError, wait=wait_none(), on_failure=on_failure
    )(flaky, 21)
    assert result == 42
    assert flaky.calls == 3
    assert [str(e) for e in seen] == ["away", "still away"]


def _not_value_error(exc: BaseException) -> bool:
    return not isinstance(exc, ValueError)


async def test_a_failure_that_is_not_transient_is_raised_at_once():
    flaky = Flaky([ValueError("refused")])
    with pytest.raises(ValueError, match="refused"):
        await retrying(
            "the flaky call",
            transient=lambda exc: not isinstance(exc, ValueError),
            wait=wait_none(),
        )(flaky, 1)
    assert flaky.calls == 1


async def test_cancellation_is_never_retried():
    flaky = Flaky([asyncio.CancelledError()])
    with pytest.raises(asyncio.CancelledError):
        await retrying("the flaky call", transient=BaseException, wait=wait_none())(flaky, 1)
    assert flaky.calls == 1


def test_backoff_grows_and_is_capped():
    wait = backoff(initial_s=0.1, max_s=1.0)
    state = RetryCallState(None, None, (), {})
    for attempt in range(1, 12):
        state.attempt_number = attempt
        delay = wait(state)
        assert 0.0 <= delay <= min(1.0, 0.1 * 2**attempt)
