"""Run coroutines from synchronous code: the blocking face of the async APIs.

Every blocking call goes to one event loop kept in a daemon thread, for two reasons:
``asyncio.run`` per call would open a new loop each time, so a pool opened by one call could
not serve the next; and it refuses to run at all under a running loop (a notebook cell, a
FastAPI handler), where a blocking call must still work.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def _runner_loop() -> asyncio.AbstractEventLoop:
    global _loop, _thread
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="posttrain-blocking-calls", daemon=True
            )
            thread.start()
            _loop, _thread = loop, thread
        return _loop


def run_sync(coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
    """Run ``coro`` to completion and return its result (or raise its exception).

    Raises ``RuntimeError`` when called from a coroutine running on the runner's own loop,
    which would wait for itself for ever: call the ``a``-prefixed twin there instead."""
    loop = _runner_loop()
    if threading.current_thread() is _thread:
        coro.close()
        raise RuntimeError("a blocking posttrain call inside its own loop: await the a-twin")
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result(timeout_s)
    except TimeoutError:
        future.cancel()
        raise
    except KeyboardInterrupt:
        future.cancel()
        raise
