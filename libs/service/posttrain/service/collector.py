"""The cyclic garbage collector's settings for a long-running process: one place for the
policy each service (and each process of the test harness) sets once at its start.

A process that keeps a large, long-lived graph (imported modules and classes, pipelines in
memory, rows waiting to be written) and allocates many short-lived objects pays for CPython's
default thresholds (700, 10, 10) with collections many times a second and full ones that walk
the whole graph: stalls of tens to hundreds of milliseconds. Reference counting frees what has
no cycles either way; the thresholds only decide how often cycles are looked for.
"""

from __future__ import annotations

import gc


def quiet_collector(thresholds: tuple[int, int, int], *, freeze: bool) -> None:
    """Set the collector's ``thresholds`` (young, middle, old). ``freeze``: first move every
    object the process holds now (what start-up built) out of the collector's sight for good,
    so that no full collection walks it again."""
    if freeze:
        gc.freeze()
    gc.set_threshold(*thresholds)
