"""Rebuild pipeline state from the event log: how the orchestrator resumes after any crash."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import mmap
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from aiokafka import TopicPartition

from posttrain.events import DecodeError
from posttrain.events.kafka import KafkaSettings
from posttrain.events.kafka.logreader import Batch, LogReader
from posttrain.events.topics import Topic
from posttrain.events.views import ViewDecoder
from posttrain.orchestrator.core.packing import States, pack, unpack
from posttrain.orchestrator.core.state import PipelineState, fold
from posttrain.orchestrator.shell.collector import cyclic_gc_paused
from posttrain.service.logs import configure_json_logging

log = logging.getLogger(__name__)


# Shorter logs fold in the orchestrator alone: at 6,400 events a helper started already saves
# 7 of 42 ms, and takes a core for it (21,200 events: 110 -> 78 ms; 63,600: 288 -> 191 ms).
DEFAULT_PARALLEL_FROM = 10_000
# One fewer than the CPUs (the orchestrator folds a share itself), at most three.
DEFAULT_PROCESSES = max(0, min((os.cpu_count() or 1) - 1, 3))


class ReplayHelpers:
    """Processes that fold shares of the log while the orchestrator folds its own: a replay is
    CPU-bound Python (reading, decoding and folding about a million events take 4-5 s of one
    core), and a pipeline's events all sit in one partition, so partitions fold apart and their
    states join.

    How a helper starts decides what it costs. Started where forking is safe (``start()``
    before the event loop runs, while no other thread does: the orchestrator's process entry
    does so), it is a fork of the interpreter as it stands, imports done: a few milliseconds,
    and its memory shared with the orchestrator's until either writes it. Started anywhere
    else (inside the running orchestrator: after a helper died, or where nobody started them
    before the loop), it is a new interpreter (spawn), never a fork of a running event loop:
    about a second of CPU and 100 MB of its own, so those start only with the first replay
    that gives them shares. A share goes to a helper only once it has started; whatever no
    started helper has taken when the orchestrator is done with its own share, it folds
    itself, so a helper still starting never holds a replay up.

    A helper replays exactly the offsets it is given, so the whole replay stops at the end
    offsets taken once, at its start; its states come back packed (``core.packing``). Logs
    shorter than ``min_events`` fold in the orchestrator alone: handing states over costs more
    than it saves there."""

    def __init__(self, processes: int, *, min_events: int = DEFAULT_PARALLEL_FROM) -> None:
        self.processes = processes
        self.min_events = min_events
        self.shares_folded = 0  # shares of a replay that helpers folded
        self.start_method: str | None = None  # "fork" or "spawn", once started
        self._pool: ProcessPoolExecutor | None = None
        self._started: list[concurrent.futures.Future[int]] = []

    def start(self) -> None:
        """Start the helpers, unless they run already: forks where that is safe, new
        interpreters elsewhere."""
        if self._pool is None:
            self._pool, self._started = self._start_pool()
            log.info(
                "replay helpers starting",
                extra={"processes": self.processes, "start_method": self.start_method},
            )

    def wait_started(self, timeout_s: float = 60.0) -> None:
        """Start the helpers if need be, and block until every one has started (imported what
        it runs)."""
        self.start()
        concurrent.futures.wait(self._started, timeout=timeout_s)

    async def started(self, helper: int) -> None:
        """Wait until helper number ``helper`` (of ``processes``) has started, or could not.

        Near enough with several: the pool hands each process's first task to whichever process
        is idle, so the ``helper``-th task done may mean fewer processes up."""
        self.start()
        # Shielded: a replay cancelled meanwhile must not cancel the start itself.
        with contextlib.suppress(Exception):
            await asyncio.shield(asyncio.wrap_future(self._started[helper]))

    def _start_pool(self) -> tuple[ProcessPoolExecutor, list[concurrent.futures.Future[int]]]:
        self.start_method = "fork" if _fork_is_safe() else "spawn"
        if self.start_method == "fork":
            ViewDecoder()  # the message classes a helper decodes with, built once for all
        pool = ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=multiprocessing.get_context(self.start_method),
            initializer=_helper_started,
            initargs=(logging.getLevelName(logging.getLogger().getEffectiveLevel()), os.getpid()),
        )
        # Each starts now (a process is spawned per task submitted while none is idle).
        return pool, [pool.submit(os.getpid) for _ in range(self.processes)]

    async def replay(
        self, settings: KafkaSettings, topic: str, starts: dict[int, int], ends: dict[int, int]
    ) -> tuple[States, int]:
        self.start()
        assert self._pool is not None
        try:
            share = self._pool.submit(_replay_in_helper, settings, topic, starts, ends, _SPOOL)
            path, count = await asyncio.wrap_future(share)
        except asyncio.CancelledError:
            share.add_done_callback(_discard)  # the replay failed here: nobody will claim it
            raise
        except BrokenProcessPool:
            # A helper died (killed, out of memory): fold its share here, and start new helpers
            # for the next replay.
            log.warning("a replay helper died: folding its share in this process")
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool, self._started = self._start_pool()
            return await _fold_on_own_reader(settings, topic, starts, ends)
        self.shares_folded += 1
        return _claim(path), count

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _fork_is_safe() -> bool:
    """Whether a fork here copies nothing that runs: no event loop in this thread, no other
    thread (a lock held by one would stay held in the child for ever)."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return threading.active_count() == 1
    return False


def _helper_started(level: str, parent: int) -> None:
    configure_json_logging(level)
    # A helper waits on its task queue for ever, and holds that queue's other end itself: it
    # would outlive an orchestrator killed with SIGKILL. It goes when its parent does.
    threading.Thread(target=_exit_with, args=(parent,), name="parent-watch", daemon=True).start()


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    for path in _written:  # states its orchestrator will never claim
        with contextlib.suppress(OSError):
            os.unlink(path)
    os._exit(0)


# States go back through a file (in memory where /dev/shm is), not the executor's pipe: tens of
# MB through a 64 KB pipe, pickled and copied on both sides, took 0.3 s; a file is written in
# milliseconds and the orchestrator unpacks it from a memory map.
_SPOOL = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
_written: set[str] = set()  # in a helper: files of states written, perhaps not claimed yet


def _replay_in_helper(
    settings: KafkaSettings,
    topic: str,
    starts: dict[int, int],
    ends: dict[int, int],
    spool: str,
) -> tuple[str, int]:
    """Fold a share; returns the file its packed states are in, and the events read."""
    with cyclic_gc_paused():
        states, count = asyncio.run(_fold_on_own_reader(settings, topic, starts, ends))
        blob = pack(states)
        # Freed before collections resume: the first one would walk all of them (3 ms of a
        # 63,600-event log's share, before the orchestrator has its states).
        del states
    _written.difference_update([p for p in _written if not os.path.exists(p)])  # claimed
    fd, path = tempfile.mkstemp(prefix="posttrain-replay-", suffix=".msgpack", dir=spool)
    _written.add(path)
    with os.fdopen(fd, "wb") as out:
        out.write(blob)
    return path, count


def _discard(share: concurrent.futures.Future[tuple[str, int]]) -> None:
    if not share.cancelled() and share.exception() is None:
        with contextlib.suppress(OSError):
            os.unlink(share.result()[0])


def _claim(path: str) -> States:
    """The states a helper wrote to ``path``; the file is gone once opened."""
    with open(path, "rb") as spooled:
        os.unlink(path)
        with mmap.mmap(spooled.fileno(), 0, access=mmap.ACCESS_READ) as packed:
            return unpack(packed)


async def replay_partitions(
    settings: KafkaSettings, partitions: Iterable[int], helpers: ReplayHelpers | None = None
) -> tuple[States, int]:
    """Fold every committed event of the given partitions of the log, up to the end offsets
    taken now; returns the states per partition and the number of events read. With
    ``helpers``, shares of a long log fold in their processes at the same time.

    Only committed events count (``read_committed``): an aborted decision never happened."""
    topic = settings.topic(Topic.PIPELINE_EVENTS)
    tps = [TopicPartition(topic, p) for p in partitions]
    if not tps:
        return {}, 0
    async with LogReader(settings) as reader:
        # One client for the bounds and this process's share of the records.
        return await _replay(reader, settings, topic, tps, helpers)


async def _replay(
    reader: LogReader,
    settings: KafkaSettings,
    topic: str,
    tps: list[TopicPartition],
    helpers: ReplayHelpers | None,
) -> tuple[States, int]:
    bounds = await reader.bounds(tps)
    starts = {tp.partition: bounds[0][tp] for tp in tps}
    ends = {tp.partition: bounds[1][tp] for tp in tps}
    sizes = {p: ends[p] - starts[p] for p in ends}
    shares = [list(ends)]
    if helpers is not None and _events_at_least(sizes) >= helpers.min_events:
        shares = _shares(sizes, 1 + helpers.processes)
    mine, theirs = shares[0], shares[1:]
    with cyclic_gc_paused(freeze=True):
        # A helper takes one of ``theirs`` once it has started; those still there when the
        # orchestrator is done with its own share, it folds itself.
        claimed: set[int] = set()
        elsewhere = [
            asyncio.ensure_future(
                _share_in_helper(helpers, n, settings, topic, starts, ends, theirs, claimed)
            )
            for n in range(len(theirs))
            if helpers is not None
        ]
        try:
            states, count = await _fold_partitions(
                reader, topic, {p: starts[p] for p in mine}, {p: ends[p] for p in mine}
            )
            left = [p for share in theirs for p in share]
            theirs.clear()
            if left:
                folded, folded_count = await _fold_partitions(
                    reader, topic, {p: starts[p] for p in left}, {p: ends[p] for p in left}
                )
                states.update(folded)
                count += folded_count
            for helper, handed in enumerate(elsewhere):
                if helper in claimed and (result := await handed) is not None:
                    states.update(result[0])
                    count += result[1]
        finally:
            for pending in elsewhere:
                pending.cancel()  # helpers still starting: nothing is left for them
    return states, count


async def _share_in_helper(
    helpers: ReplayHelpers,
    helper: int,
    settings: KafkaSettings,
    topic: str,
    starts: dict[int, int],
    ends: dict[int, int],
    unclaimed: list[list[int]],
    claimed: set[int],
) -> tuple[States, int] | None:
    """Once helper number ``helper`` has started, one of the ``unclaimed`` shares folded by the
    helpers (``helper`` added to ``claimed``); None if the orchestrator took them all."""
    await helpers.started(helper)
    if not unclaimed:
        return None
    claimed.add(helper)
    share = unclaimed.pop()
    return await helpers.replay(
        settings, topic, {p: starts[p] for p in share}, {p: ends[p] for p in share}
    )


def _events_at_least(sizes: dict[int, int]) -> int:
    """How many events, at least, the orchestrator's log holds in this many offsets.

    Only offsets are known before reading, and they count transaction markers too: the
    orchestrator commits a transaction per decision (one or two events), each followed by a
    commit marker, so up to half its offsets are markers, which cost next to nothing to pass."""
    return sum(sizes.values()) // 2


def _shares(sizes: dict[int, int], n: int) -> list[list[int]]:
    """Partitions in ``n`` groups of about equal events, the largest partitions placed first."""
    groups: list[tuple[int, list[int]]] = [(0, []) for _ in range(n)]
    for p in sorted(sizes, key=lambda p: -sizes[p]):
        total, members = min(groups, key=lambda g: g[0])
        groups.remove((total, members))
        groups.append((total + sizes[p], [*members, p]))
    return [members for _, members in groups if members] or [[]]


async def _fold_on_own_reader(
    settings: KafkaSettings, topic: str, starts: dict[int, int], ends: dict[int, int]
) -> tuple[States, int]:
    async with LogReader(settings) as reader:
        return await _fold_partitions(reader, topic, starts, ends)


async def _fold_partitions(
    reader: LogReader, topic: str, starts: dict[int, int], ends: dict[int, int]
) -> tuple[States, int]:
    states: States = {p: {} for p in ends}
    views = ViewDecoder()  # the fold only reads fields: views skip model validation
    count = 0
    async for batch in reader.read(topic, starts, ends):
        count += _fold_batch(batch, states[batch.partition], views, topic)
    return states, count


def _fold_batch(
    batch: Batch, by_pipeline: dict[str, PipelineState], views: ViewDecoder, topic: str
) -> int:
    skipped = 0

    def skip(index: int, error: DecodeError) -> None:
        nonlocal skipped
        skipped += 1
        offset = batch.offset(index)
        log.error(
            "unreadable event skipped in replay: %s[%s]@%s: %s",
            topic,
            batch.partition,
            offset,
            error,
        )

    envelopes = views.decode_all(batch.values, skip, batch.extra_headers)
    fold(envelopes, into=by_pipeline)
    return len(batch.values) - skipped
