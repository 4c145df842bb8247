"""Retrying until it works, for the service shells (a database or a broker that is away for a
while): tenacity, with one backoff for every shell.

    await retrying("writing a batch to PostgreSQL", transient=is_transient, on_failure=forget)(
        write, batch
    )

This is plumbing only: the orchestrator's retry policy for stages is recorded in its event log
and is domain logic (``posttrain.orchestrator.core``), not this.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception
from tenacity.wait import wait_base, wait_random_exponential

log = logging.getLogger(__name__)

Failure = Callable[[BaseException], Awaitable[None] | None]
Transient = Callable[[BaseException], bool] | type[BaseException] | tuple[type[BaseException], ...]


def backoff(initial_s: float = 0.1, max_s: float = 5.0) -> wait_base:
    """Exponential and capped, drawn at random under the curve ("full jitter"), so that many
    instances do not all knock at once when the server comes back."""
    return wait_random_exponential(multiplier=initial_s, max=max_s)


def retrying(
    what: str,
    *,
    transient: Transient = Exception,
    wait: wait_base | None = None,
    on_failure: Failure | None = None,
) -> AsyncRetrying:
    """Retries forever while the failure is ``transient`` (a predicate, or exception classes);
    any other failure, and cancellation always, is raised at once. Each failed attempt is
    logged (as "``what`` failed; retrying") and handed to ``on_failure`` before the wait, e.g.
    to count it or to drop a broken connection. Make one per use: the object keeps state."""
    is_transient: Callable[[BaseException], bool]
    if isinstance(transient, type | tuple):
        kind = transient
        is_transient = lambda exc: isinstance(exc, kind)  # noqa: E731
    else:
        is_transient = transient

    async def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        assert exc is not None  # only failed attempts are retried
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "%s failed; retrying",
            what,
            extra={
                "error": repr(exc),
                "attempt": state.attempt_number,
                "retry_in_s": round(delay, 2),
            },
        )
        if on_failure is not None:
            result = on_failure(exc)
            if result is not None:
                await result

    return AsyncRetrying(
        # Cancellation is a BaseException, never transient: a stopping shell stops at once.
        retry=retry_if_exception(lambda exc: isinstance(exc, Exception) and is_transient(exc)),
        wait=wait if wait is not None else backoff(),
        before_sleep=before_sleep,
        reraise=True,
    )
