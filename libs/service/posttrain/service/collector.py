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

# For a process whose event loop must answer within milliseconds while it holds a large graph
# and makes many short-lived objects per message (CPython's defaults are 700, 10, 10): the
# orchestrator, and the processes that stand in for many machines in the fleet simulator. In the
# orchestrator at 1,000 agents (bench.fleet, gc.callbacks) the defaults made about 35
# collections a second and a full one every few seconds, together a sixth of the loop's time,
# each full one a stall of up to 250 ms; with these, a few young collections in a 35 s run and
# no full one. Memory is reference-counted all the same (only cycles wait longer).
EVENT_LOOP_THRESHOLDS = (20_000, 20, 20)


def quiet_collector(thresholds: tuple[int, int, int], *, freeze: bool) -> None:
    """Set the collector's ``thresholds`` (young, middle, old). ``freeze``: first move every
    object the process holds now (what start-up built) out of the collector's sight for good,
    so that no full collection walks it again."""
    if freeze:
        gc.freeze()
    gc.set_threshold(*thresholds)
