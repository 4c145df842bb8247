"""The gateway's read cache: a pipeline's documents are dropped when it changes, and a read
that raced a change never leaves what it read before the change behind."""

from __future__ import annotations

import asyncio

import orjson

from posttrain.gateway.live import ReadCache


async def test_a_document_is_read_once_until_its_pipeline_changes():
    cache = ReadCache()
    cache.enabled = True
    reads = []

    async def load():
        reads.append(1)
        return {"version": len(reads)}

    assert orjson.loads(await cache.read("p", "status", load)) == {"version": 1}
    assert orjson.loads(await cache.read("p", "status", load)) == {"version": 1}
    cache.changed("other")
    assert orjson.loads(await cache.read("p", "status", load)) == {"version": 1}
    cache.changed("p")
    assert orjson.loads(await cache.read("p", "status", load)) == {"version": 2}
    assert cache.hits == 2


async def _settle():
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_read_that_raced_a_change_is_not_kept_and_concurrent_misses_share_a_read():
    cache = ReadCache()
    cache.enabled = True
    gate = asyncio.Event()
    reads = []

    async def slow():
        reads.append(1)
        number = len(reads)
        await gate.wait()
        return {"read": number}

    first = asyncio.create_task(cache.read("p", "status", slow))
    second = asyncio.create_task(cache.read("p", "status", slow))
    await _settle()
    assert len(reads) == 1  # the second request waits for the first read
    cache.changed("p")  # a change commits while that read is on its way
    third = asyncio.create_task(cache.read("p", "status", slow))
    await _settle()
    assert len(reads) == 2  # begun after the change: a read of its own
    gate.set()
    got = [orjson.loads(await t) for t in (first, second, third)]
    assert got == [{"read": 1}, {"read": 1}, {"read": 2}]
    # What the first read got (from before the change) is not kept; the third's is.
    assert orjson.loads(await cache.read("p", "status", slow)) == {"read": 2}
    assert len(reads) == 2


async def test_nothing_is_cached_while_notifications_are_not_heard_and_none_is_not_kept():
    cache = ReadCache()
    reads = []

    async def load():
        reads.append(1)
        return None if len(reads) == 1 else {"n": len(reads)}

    assert await cache.read("p", "status", load) is None
    await cache.read("p", "status", load)
    await cache.read("p", "status", load)
    assert len(reads) == 3  # disabled: every read goes to the database
    cache.enabled = True
    await cache.read("p", "status", load)
    await cache.read("p", "status", load)
    assert len(reads) == 4
    cache.clear()
    await cache.read("p", "status", load)
    assert len(reads) == 5
