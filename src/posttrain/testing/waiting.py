"""Waiting for a condition with a deadline, for the harnesses and benchmarks: they poll what
they can observe instead of sleeping and hoping."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


async def wait_until(
    predicate: Callable[[], Any], *, timeout: float, interval: float, what: str
) -> Any:
    """Poll ``predicate`` (sync or async) until it is truthy; that value. AssertionError after
    ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)
