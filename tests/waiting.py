"""Wait for a condition with a timeout: tests never sleep and hope."""

from __future__ import annotations

import asyncio


async def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = ""):
    """Poll ``predicate`` (sync or async) until it returns a truthy value, or fail."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(interval)
