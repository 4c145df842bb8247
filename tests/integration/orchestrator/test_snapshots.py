"""Snapshots on the real broker: a restarted orchestrator starts from its partitions' latest
snapshots and folds only the events after them; ended pipelines leave memory and come back when
a command is about them; a corrupt snapshot is reported and the log folded instead; kill -9 at
random moments with a snapshot in every transaction still runs every stage attempt once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter

import pytest

from posttrain.events import Envelope
from posttrain.events.kafka import EventProducer
from posttrain.events.kafka.producer import partition_for
from posttrain.events.messages import ResumePipeline
from posttrain.events.topics import PIPELINE_PARTITIONS, Topic
from posttrain.orchestrator.client import PipelineExecutor
from posttrain.orchestrator.core.state import PipelineStatus, fold
from posttrain.orchestrator.shell.service import Orchestrator
from posttrain.orchestrator.shell.snapshots import SnapshotPolicy
from posttrain.testing.orchestrator import read_log, start_orchestrator
from posttrain.testing.scripted_agent import ScriptedAgent, read_record
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

EVERY_TRANSACTION = SnapshotPolicy(every_events=1, every_s=0.0)


def cmd(name, deps=()):
    return {"name": name, "task": "command", "params": {"argv": [name]}, "depends_on": list(deps)}


@contextlib.asynccontextmanager
async def orchestrating(kafka_settings, policy=EVERY_TRANSACTION):
    stop = asyncio.Event()
    orchestrator = Orchestrator(
        kafka_settings, tick_interval_s=0.2, session_timeout_ms=2000, snapshots=policy
    )
    await orchestrator.start()
    task = asyncio.create_task(orchestrator.run(stop))
    try:
        await wait_for(
            lambda: orchestrator.stats.assigned and len(orchestrator.partitions) == 6,
            timeout=30,
            what="the orchestrator to own every partition",
        )
        yield orchestrator
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await orchestrator.stop()


def in_memory(orchestrator, pid):
    return orchestrator.states.get(partition_for(pid.encode(), PIPELINE_PARTITIONS), {}).get(pid)


def archived(orchestrator, pid):
    book = orchestrator._books.get(partition_for(pid.encode(), PIPELINE_PARTITIONS))
    return book is not None and pid in book.archived


async def status_on_log(kafka_settings, pid, wanted):
    async def check():
        return fold(e for e in await read_log(kafka_settings) if e.key == pid).get(pid)

    async def reached():
        state = await check()
        return state if state is not None and state.status == wanted else None

    return await wait_for(reached, timeout=40, interval=0.3, what=f"{pid} {wanted}")


async def test_a_restart_starts_from_the_snapshot_and_brings_back_an_ended_pipeline(
    kafka_settings, tmp_path, run_id
):
    done, failed, held = f"{run_id}-done", f"{run_id}-failed", f"{run_id}-held"
    release = asyncio.Event()
    agent = ScriptedAgent(
        kafka_settings,
        "gpu-1",
        tmp_path / "record.jsonl",
        fail={"f_b": [1]},
        holds={"h_b": release},
    )
    await agent.start()
    try:
        async with orchestrating(kafka_settings) as first:
            await PipelineExecutor(done, settings=kafka_settings).aexecute([cmd("d_a")])
            await PipelineExecutor(failed, settings=kafka_settings).aexecute(
                [cmd("f_a"), cmd("f_b", ["f_a"])]
            )
            await PipelineExecutor(held, settings=kafka_settings).aexecute(
                [cmd("h_a"), cmd("h_b", ["h_a"])]
            )
            await wait_for(
                lambda: archived(first, done) and archived(first, failed),
                timeout=40,
                what="the ended pipelines to leave memory",
            )
            assert in_memory(first, done) is None and in_memory(first, failed) is None
            await wait_for(
                lambda: (s := in_memory(first, held)) and s.stages["h_b"].status == "running",
                timeout=30,
                what="h_b to run",
            )
        logged = len(await read_log(kafka_settings))

        async with orchestrating(kafka_settings) as second:
            # From the snapshots: the running pipeline in memory as the whole log has it, the
            # ended ones archived, and only events after the snapshots folded (none here).
            assert second.stats.snapshots_loaded >= 1
            assert second.stats.snapshots_unusable == 0
            assert second.stats.events_replayed < logged
            whole = fold(await read_log(kafka_settings))
            assert in_memory(second, held) == whole[held]
            assert archived(second, done) and archived(second, failed)
            assert in_memory(second, failed) is None

            # A resume of the failed pipeline brings it back and runs it to the end.
            async with EventProducer(kafka_settings) as producer:
                await producer.send(
                    Topic.PIPELINE_COMMANDS,
                    Envelope.create(ResumePipeline(pipeline_id=failed), key=failed),
                )
            release.set()
            await status_on_log(kafka_settings, failed, PipelineStatus.SUCCEEDED)
            await status_on_log(kafka_settings, held, PipelineStatus.SUCCEEDED)
            assert second.stats.pipelines_restored >= 1
    finally:
        await agent.stop()
    executed = Counter((r["stage"], r["attempt"]) for r in read_record(tmp_path / "record.jsonl"))
    assert executed == {
        ("d_a", 1): 1,
        ("f_a", 1): 1,
        ("f_b", 1): 1,
        ("f_b", 2): 1,
        ("h_a", 1): 1,
        ("h_b", 1): 1,
    }


async def test_a_corrupt_snapshot_is_reported_and_the_log_folded_instead(
    kafka_settings, tmp_path, run_id, caplog
):
    pid = f"{run_id}-c"
    release = asyncio.Event()
    agent = ScriptedAgent(kafka_settings, "gpu-1", tmp_path / "r.jsonl", holds={"c_b": release})
    await agent.start()
    try:
        async with orchestrating(kafka_settings) as first:
            await PipelineExecutor(pid, settings=kafka_settings).aexecute(
                [cmd("c_a"), cmd("c_b", ["c_a"])]
            )
            await wait_for(
                lambda: (s := in_memory(first, pid)) and s.stages["c_b"].status == "running",
                timeout=30,
                what="c_b to run",
            )
            assert first.stats.snapshots_written >= 1
        # The partition's latest snapshot record is now garbage.
        p = partition_for(pid.encode(), PIPELINE_PARTITIONS)
        async with EventProducer(kafka_settings) as producer:
            await producer.client.send_and_wait(
                kafka_settings.topic(Topic.ORCHESTRATOR_SNAPSHOTS),
                key=f"p{p}".encode(),
                value=b"P\x00not zlib at all",
                partition=p,
            )
        caplog.set_level(logging.WARNING)
        async with orchestrating(kafka_settings) as second:
            assert second.stats.snapshots_unusable == 1
            assert any(
                r.levelno == logging.WARNING
                and f"snapshot of partition {p} is unusable" in r.getMessage()
                for r in caplog.records
            )
            whole = fold(await read_log(kafka_settings))
            assert in_memory(second, pid) == whole[pid]
            release.set()
            await status_on_log(kafka_settings, pid, PipelineStatus.SUCCEEDED)
    finally:
        await agent.stop()


async def test_kill_9_with_a_snapshot_in_every_transaction_runs_every_attempt_once(
    kafka_settings, tmp_path, run_id
):
    stages = [
        cmd("prep"),
        cmd("sft", ["prep"]),
        cmd("rl_1", ["sft"]),
        cmd("rl_2", ["sft"]),
        cmd("eval", ["rl_1", "rl_2"]),
    ]
    record = tmp_path / "record.jsonl"
    release = asyncio.Event()
    agent = ScriptedAgent(
        kafka_settings, "gpu-1", record, default_duration=0.5, holds={"eval": release}
    )
    await agent.start()
    rng = random.Random(20261203)
    log = tmp_path / "orchestrator.log"
    snapshotting = ("--no-projection", "--snapshot-every-events", "1", "--snapshot-every-s", "0")
    kills = 0
    try:
        await PipelineExecutor(run_id, settings=kafka_settings).aexecute(stages)
        while True:
            owned_before = log.read_text().count("owns partitions") if log.exists() else 0
            process = start_orchestrator(kafka_settings, log, *snapshotting)
            if kills >= 8:
                release.set()
                break
            await wait_for(
                lambda p=process, n=owned_before: (
                    log.read_text().count("owns partitions") > n or not p.running
                ),
                timeout=60,
                what="the orchestrator to own its partitions",
            )
            await asyncio.sleep(rng.uniform(0.05, 1.0))
            if not process.running:
                raise AssertionError(f"orchestrator died by itself:\n{log.read_text()[-3000:]}")
            process.kill()
            kills += 1
        await status_on_log(kafka_settings, run_id, PipelineStatus.SUCCEEDED)
        process.stop()
    finally:
        await agent.stop()
    events = await read_log(kafka_settings)
    assert [i for i, n in Counter(e.id for e in events).items() if n > 1] == []
    dispatched = Counter(
        (e.data.stage, e.data.attempt) for e in events if e.type == "StageDispatched"
    )
    assert all(n == 1 for n in dispatched.values()), dispatched
    executed = Counter((r["stage"], r["attempt"]) for r in read_record(record))
    assert executed == {(s["name"], 1): 1 for s in stages}
    # Restarts started from snapshots (the first one and those killed early had none).
    assert "starts from its snapshot" in log.read_text()
    assert "unusable" not in log.read_text()


@contextlib.asynccontextmanager
async def instances(kafka_settings, n):
    stop = asyncio.Event()
    started = [
        Orchestrator(kafka_settings, tick_interval_s=0.2, session_timeout_ms=2000) for _ in range(n)
    ]
    for orchestrator in started:
        await orchestrator.start()
    tasks = [asyncio.create_task(o.run(stop)) for o in started]

    def settled():
        owned = [set(o.partitions) for o in started]
        return (
            all(o.stats.assigned for o in started)
            and all(owned)
            and sum(len(s) for s in owned) == PIPELINE_PARTITIONS == len(set().union(*owned))
        )

    try:
        await wait_for(settled, timeout=40, what=f"{n} instances to share the partitions")
        yield started
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for orchestrator in started:
            await orchestrator.stop()


def key_on(partitions, prefix):
    return next(
        key
        for key in (f"{prefix}-{i}" for i in range(1000))
        if partition_for(key.encode(), PIPELINE_PARTITIONS) in partitions
    )


async def test_a_cached_stage_is_reused_across_instances_and_after_a_restart(
    kafka_settings, tmp_path, run_id
):
    same = {"name": "prep", "task": "command", "params": {"argv": ["same"]}, "cache": True}
    record = tmp_path / "record.jsonl"
    agent = ScriptedAgent(kafka_settings, "gpu-1", record)
    await agent.start()

    async def cached_from(pid):
        async def check():
            return next(
                (
                    e.data.from_command_id
                    for e in await read_log(kafka_settings)
                    if e.type == "StageCached" and e.key == pid
                ),
                None,
            )

        return await wait_for(check, timeout=30, interval=0.3, what=f"{pid} served from cache")

    try:
        async with instances(kafka_settings, 2) as (a, b):
            first = key_on(set(a.partitions), f"{run_id}-x")
            other = key_on(set(b.partitions), f"{run_id}-y")
            await PipelineExecutor(first, settings=kafka_settings).aexecute([same])
            await status_on_log(kafka_settings, first, PipelineStatus.SUCCEEDED)
            await wait_for(
                lambda: any(
                    e.command_id == f"{first}:prep:1" for e in b._stage_cache.entries.values()
                ),
                timeout=20,
                what="the entry in the other instance's table",
            )
            # The other instance owns this pipeline's partition, never had the first in memory.
            assert in_memory(b, first) is None and not archived(b, first)
            await PipelineExecutor(other, settings=kafka_settings).aexecute([same])
            assert await cached_from(other) == f"{first}:prep:1"
        async with orchestrating(kafka_settings) as restarted:
            later = f"{run_id}-z"
            await wait_for(lambda: restarted._stage_cache.entries, timeout=20, what="the table")
            await PipelineExecutor(later, settings=kafka_settings).aexecute([same])
            assert await cached_from(later) == f"{first}:prep:1"
    finally:
        await agent.stop()
    assert [r["stage"] for r in read_record(record)] == ["prep"]  # ran once, for the first


async def test_a_rebalance_hands_partitions_over_through_their_snapshots(
    kafka_settings, tmp_path, run_id
):
    release = asyncio.Event()
    record = tmp_path / "record.jsonl"
    agent = ScriptedAgent(kafka_settings, "gpu-1", record, holds={"r_b": release})
    await agent.start()
    pids = [key_on({p}, f"{run_id}-r{p}") for p in range(PIPELINE_PARTITIONS)]
    try:
        async with orchestrating(kafka_settings) as first:
            for pid in pids:
                await PipelineExecutor(pid, settings=kafka_settings).aexecute(
                    [cmd("r_a"), cmd("r_b", ["r_a"])]
                )
            await wait_for(
                lambda: all(
                    (s := in_memory(first, pid)) and s.stages["r_b"].status == "running"
                    for pid in pids
                ),
                timeout=30,
                what="every pipeline's r_b to run",
            )
            second = Orchestrator(
                kafka_settings,
                tick_interval_s=0.2,
                session_timeout_ms=2000,
                snapshots=EVERY_TRANSACTION,
            )
            stop = asyncio.Event()
            await second.start()
            task = asyncio.create_task(second.run(stop))
            try:
                await wait_for(
                    lambda: (
                        second.stats.assigned
                        and not second.stats.replaying
                        and second.partitions
                        and first.partitions
                        and not set(first.partitions) & set(second.partitions)
                    ),
                    timeout=40,
                    what="the partitions to be shared",
                )
                # Every partition it was given started from its snapshot.
                assert second.stats.snapshots_loaded >= len(second.partitions)
                assert second.stats.snapshots_unusable == 0
                whole = fold(await read_log(kafka_settings))
                moved = [pid for pid in pids if in_memory(second, pid) is not None]
                assert moved and all(in_memory(second, pid) == whole[pid] for pid in moved)
                release.set()
                for pid in pids:
                    await status_on_log(kafka_settings, pid, PipelineStatus.SUCCEEDED)
            finally:
                stop.set()
                await asyncio.gather(task, return_exceptions=True)
                await second.stop()
    finally:
        await agent.stop()
    executed = Counter(r["command_id"] for r in read_record(record))
    assert len(executed) == 2 * len(pids) and set(executed.values()) == {1}


async def test_an_archived_state_that_cannot_be_read_falls_back_to_the_log(
    kafka_settings, tmp_path, run_id, caplog
):
    failed = f"{run_id}-lost"
    record = tmp_path / "record.jsonl"
    agent = ScriptedAgent(kafka_settings, "gpu-1", record, fail={"l_b": [1]})
    await agent.start()
    try:
        async with orchestrating(kafka_settings) as orchestrator:
            await PipelineExecutor(failed, settings=kafka_settings).aexecute(
                [cmd("l_a"), cmd("l_b", ["l_a"])]
            )
            await wait_for(
                lambda: archived(orchestrator, failed), timeout=40, what="the pipeline archived"
            )
            # Its index entry now points past its record (at another record, or a marker).
            p = partition_for(failed.encode(), PIPELINE_PARTITIONS)
            orchestrator._books[p].archived[failed] += 1
            caplog.set_level(logging.WARNING)
            async with EventProducer(kafka_settings) as producer:
                await producer.send(
                    Topic.PIPELINE_COMMANDS,
                    Envelope.create(ResumePipeline(pipeline_id=failed), key=failed),
                )
            await status_on_log(kafka_settings, failed, PipelineStatus.SUCCEEDED)
            assert any(
                f"archived state of {failed} is unusable" in r.getMessage() for r in caplog.records
            )
            assert orchestrator.stats.snapshots_unusable == 1
    finally:
        await agent.stop()
    executed = Counter((r["stage"], r["attempt"]) for r in read_record(record))
    assert executed == {("l_a", 1): 1, ("l_b", 1): 1, ("l_b", 2): 1}
