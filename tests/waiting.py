"""Wait for a condition with a timeout: tests never sleep and hope."""

from __future__ import annotations

from posttrain.testing.waiting import wait_until


async def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = ""):
    """Poll ``predicate`` (sync or async) until it returns a truthy value (returned), or fail
    (``posttrain.testing.waiting.wait_until`` with a test's defaults)."""
    return await wait_until(
        predicate, timeout=timeout, interval=interval, what=what or str(predicate)
    )
