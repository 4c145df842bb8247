"""Replay with helper processes rebuilds exactly the states one process rebuilds, on the real
broker; a helper that dies costs nothing but time; helpers go when their orchestrator is killed."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from posttrain.events.kafka import KafkaSettings
from posttrain.events.topics import TOPICS, Topic
from posttrain.orchestrator.shell.replay import _SPOOL, ReplayHelpers, _discard, replay_partitions
from posttrain.testing.orchestrator import start_orchestrator
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

GOLDEN = Path(__file__).parents[2] / "unit" / "orchestrator" / "golden"
PARTITIONS = list(range(TOPICS[Topic.PIPELINE_EVENTS].partitions))


async def _write_copies(settings: KafkaSettings, copies: int) -> int:
    """Each golden history under ``copies`` pipeline ids, keyed by pipeline (so spread over the
    partitions), as the exact bytes in the files: their v1 events are read as models, the rest
    as views."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, enable_idempotence=True
    )
    await producer.start()
    written = 0
    try:
        for path in sorted(GOLDEN.glob("*.jsonl")):
            lines = path.read_text().splitlines()
            pipeline = orjson.loads(lines[0])["data"]["pipeline_id"]
            for i in range(copies):
                copy = f"{pipeline}-{i}"
                for line in lines:
                    await producer.send(
                        settings.topic(Topic.PIPELINE_EVENTS),
                        line.replace(pipeline, copy).encode(),
                        key=copy.encode(),
                    )
                    written += 1
        await producer.flush()
    finally:
        await producer.stop()
    return written


def _helper_pids(parent: int) -> list[int]:
    """The replay helpers a process started: multiprocessing's spawned children, or forks of
    it (the same command line)."""
    own = Path(f"/proc/{parent}/cmdline").read_bytes()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == parent and (b"spawn_main" in cmdline or cmdline == own):
            pids.append(int(entry.name))
    return pids


def _spooled() -> set[Path]:
    """Files of states helpers wrote and nobody has claimed."""
    return set(Path(_SPOOL).glob("posttrain-replay-*"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_helpers_rebuild_the_states_one_process_rebuilds(kafka_settings):
    written = await _write_copies(kafka_settings, copies=40)
    alone, count = await replay_partitions(kafka_settings, PARTITIONS)
    histories = len(list(GOLDEN.glob("*.jsonl")))
    assert count == written and sum(len(s) for s in alone.values()) == histories * 40

    helpers = ReplayHelpers(1, min_events=0)
    spooled_before = _spooled()
    try:
        helpers.wait_started()
        together, count_together = await replay_partitions(kafka_settings, PARTITIONS, helpers)
        assert helpers.shares_folded == 1  # a share really was folded elsewhere
        assert count_together == written
        assert together == alone
        # The helper's states came through a file, and the file is gone.
        assert _spooled() <= spooled_before

        # A helper killed between replays: its share folds here, and the next replay has new
        # helpers.
        (helper,) = _helper_pids(os.getpid())
        os.kill(helper, signal.SIGKILL)
        await wait_for(lambda: not _alive(helper) or None, timeout=10, what="helper gone")
        after_death, _ = await replay_partitions(kafka_settings, PARTITIONS, helpers)
        assert after_death == alone and helpers.shares_folded == 1
        helpers.wait_started()
        again, _ = await replay_partitions(kafka_settings, PARTITIONS, helpers)
        assert again == alone and helpers.shares_folded == 2
    finally:
        helpers.close()


async def test_an_orchestrator_replays_with_helpers_that_die_with_it(kafka_settings, tmp_path):
    written = await _write_copies(kafka_settings, copies=10)
    log = tmp_path / "orchestrator.log"
    process = start_orchestrator(
        kafka_settings, log, "--replay-processes", "1", "--replay-parallel-from", "1"
    )
    try:

        def logged(prefix: str) -> list[dict[str, Any]]:
            lines = log.read_text().splitlines() if log.exists() else []
            docs = [orjson.loads(line) for line in lines if line.startswith("{")]
            return [d for d in docs if d.get("message", "").startswith(prefix)]

        def replayed() -> int:
            return sum(d["events"] for d in logged("replayed"))

        await wait_for(lambda: replayed() >= written, timeout=60, what="the log replayed")
        assert replayed() == written
        # The process entry started the helper before its event loop: a fork, which took the
        # helpers' share of the log.
        assert [d["start_method"] for d in logged("replay helpers starting")] == ["fork"]
        assert sum(d["helper_shares"] for d in logged("replayed")) >= 1
        helpers = _helper_pids(process.pid)
        assert len(helpers) == 1
        os.kill(process.pid, signal.SIGKILL)  # the orchestrator alone, as the OOM killer would
        await wait_for(lambda: not process.running, timeout=10, what="the orchestrator gone")
        await wait_for(lambda: not any(_alive(p) for p in helpers), timeout=10, what="helpers gone")
    finally:
        process.stop()


def test_states_a_failed_replay_will_never_claim_are_discarded(tmp_path):
    spooled = tmp_path / "posttrain-replay-1.msgpack"
    spooled.write_bytes(b"\x80")
    folded: concurrent.futures.Future[tuple[str, int]] = concurrent.futures.Future()
    folded.set_result((str(spooled), 1))
    _discard(folded)
    assert not spooled.exists()
    never_ran: concurrent.futures.Future[tuple[str, int]] = concurrent.futures.Future()
    never_ran.cancel()
    _discard(never_ran)  # nothing was written
    failed: concurrent.futures.Future[tuple[str, int]] = concurrent.futures.Future()
    failed.set_exception(RuntimeError("the helper's share failed"))
    _discard(failed)


async def test_helpers_start_with_the_first_replay_that_gives_them_a_share(kafka_settings):
    written = await _write_copies(kafka_settings, copies=5)
    alone, _ = await replay_partitions(kafka_settings, PARTITIONS)
    helpers = ReplayHelpers(1, min_events=written + 1)
    try:
        # A log shorter than min_events: folded here, and no helper was started for it.
        short, count = await replay_partitions(kafka_settings, PARTITIONS, helpers)
        assert short == alone and count == written
        assert _helper_pids(os.getpid()) == [] and helpers.shares_folded == 0
        # Long enough: the helper starts now, and the states are the same however the shares
        # went (to it if it started in time, else folded here).
        helpers.min_events = 0
        again, count = await replay_partitions(kafka_settings, PARTITIONS, helpers)
        assert again == alone and count == written
        assert len(_helper_pids(os.getpid())) == 1
    finally:
        helpers.close()


class _NeverStarting(ReplayHelpers):
    """Helpers whose start never ends (a machine too busy to run their imports)."""

    async def started(self, helper: int) -> None:
        await asyncio.Event().wait()


async def test_a_share_no_started_helper_took_is_folded_by_the_orchestrator(kafka_settings):
    written = await _write_copies(kafka_settings, copies=5)
    alone, _ = await replay_partitions(kafka_settings, PARTITIONS)
    helpers = _NeverStarting(1, min_events=0)
    try:
        together, count = await asyncio.wait_for(
            replay_partitions(kafka_settings, PARTITIONS, helpers), timeout=60
        )
        assert together == alone and count == written
        assert helpers.shares_folded == 0  # the orchestrator folded the helper's share itself
    finally:
        helpers.close()


def _spawned(pid: int) -> bool:
    return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()


async def test_helpers_started_inside_a_running_event_loop_are_new_interpreters():
    # A fork here would copy the running loop and its threads' held locks into the helper.
    helpers = ReplayHelpers(1)
    try:
        helpers.wait_started()
        assert helpers.start_method == "spawn"
        (helper,) = _helper_pids(os.getpid())
        assert _spawned(helper)
    finally:
        helpers.close()
