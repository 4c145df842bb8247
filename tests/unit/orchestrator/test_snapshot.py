"""Snapshots: the state a snapshot plus the events after it fold to equals the state the whole log
folds to, for every golden history and for random cut points; unusable snapshots are refused."""

from __future__ import annotations

import zlib
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.events import decode
from posttrain.orchestrator.core import snapshot as snapshots
from posttrain.orchestrator.core.snapshot import (
    PartitionSnapshot,
    SnapshotUnusable,
    archivable,
    cache_of,
    decode_archived,
    decode_partition,
    encode_archived,
    encode_partition,
    pipelines_to_restore,
)
from posttrain.orchestrator.core.state import PipelineState, fold
from tests.unit.orchestrator.sim import World

GOLDEN = Path(__file__).parent / "golden"
NAMES = sorted(p.name.removesuffix(".jsonl") for p in GOLDEN.glob("*.jsonl"))
HISTORIES = {
    name: [decode(line.encode()) for line in (GOLDEN / f"{name}.jsonl").read_text().splitlines()]
    for name in NAMES
}


class Partition:
    """One events partition replayed the way the orchestrator does: snapshots taken at cut
    points (ended pipelines archived into a store of records), then rebuilt from the latest
    snapshot and the events after it."""

    def __init__(self) -> None:
        self.store: list[bytes] = []  # the snapshots topic's archived-pipeline records
        self.snapshot: bytes | None = None
        self.states: dict[str, PipelineState] = {}
        self.archived: dict[str, int] = {}
        self.cache: dict = {}

    def take_snapshot(self, offset: int) -> None:
        ended = [s for s in self.states.values() if archivable(s)]
        for state in ended:
            self.store.append(encode_archived(state))
            self.archived[state.pipeline_id] = len(self.store) - 1
            del self.states[state.pipeline_id]
        self.cache |= cache_of(ended)
        self.snapshot = encode_partition(
            PartitionSnapshot(
                partition=0,
                events_offset=offset,
                states=self.states,
                archived=self.archived,
                cache=self.cache,
            )
        )

    def restart(self) -> int:
        """Forget everything in memory, load the snapshot; the offset to fold on from."""
        assert self.snapshot is not None
        loaded = decode_partition(self.snapshot)
        self.states, self.archived, self.cache = loaded.states, loaded.archived, loaded.cache
        return loaded.events_offset

    def fold(self, events: list) -> None:
        missing = pipelines_to_restore(
            {e.data.pipeline_id for e in events}, self.states, self.archived
        )
        for pid, offset in missing.items():
            self.states[pid] = decode_archived(self.store[offset])
        fold(events, into=self.states)

    def state_of(self, pid: str) -> PipelineState:
        if pid in self.states:
            return self.states[pid]
        return decode_archived(self.store[self.archived[pid]])


def _replay_with_cuts(log: list, cuts: list[int]) -> Partition:
    partition = Partition()
    offset = 0
    for cut in sorted(cuts):
        partition.fold(log[offset:cut])
        partition.take_snapshot(cut)
        offset = partition.restart()
        assert offset == cut
    partition.fold(log[offset:])
    return partition


def _assert_same(partition: Partition, log: list) -> None:
    whole = fold(log)
    for pid, state in whole.items():
        assert partition.state_of(pid) == state, pid
    assert set(partition.states) | set(partition.archived) == set(whole)
    # The stage cache: entries of archived pipelines kept with the snapshot, the others rebuilt.
    assert partition.cache | cache_of(partition.states.values()) == cache_of(whole.values())


@pytest.mark.parametrize("name", NAMES)
def test_snapshot_plus_tail_folds_to_the_whole_logs_state_at_every_cut(name):
    log = HISTORIES[name]
    for cut in range(len(log) + 1):
        _assert_same(_replay_with_cuts(log, [cut]), log)


def test_an_ended_pipeline_leaves_memory_and_comes_back_when_its_log_goes_on():
    log = HISTORIES["failure_and_resume"]
    resumed = next(i for i, e in enumerate(log) if e.type == "PipelineResumed")
    partition = Partition()
    partition.fold(log[:resumed])
    partition.take_snapshot(resumed)
    assert partition.states == {}  # failed, nothing in flight: archived
    assert list(partition.archived) == ["golden-resume"]
    partition.restart()
    partition.fold(log[resumed:])
    assert partition.states["golden-resume"] == fold(log)["golden-resume"]


@st.composite
def interleaved(draw):
    """The golden histories interleaved in a random order (each keeps its own order), as they
    would share a partition, with random cut points."""
    queues = {name: list(events) for name, events in HISTORIES.items()}
    log = []
    while queues:
        name = draw(st.sampled_from(sorted(queues)))
        log.append(queues[name].pop(0))
        if not queues[name]:
            del queues[name]
    cuts = draw(st.lists(st.integers(0, len(log)), max_size=4))
    return log, cuts


@settings(max_examples=200, deadline=None)
@given(interleaved())
def test_random_cut_points_over_interleaved_histories_fold_to_the_same_states(drawn):
    log, cuts = drawn
    _assert_same(_replay_with_cuts(log, cuts), log)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.data())
def test_running_pipelines_snapshot_mid_flight_and_go_on_deciding_the_same(n_stages, data):
    # A pipeline still running: kept in the snapshot, then decides on the restored state
    # exactly as on the original.
    stages = [
        {"name": f"s{i}", "task": "command", "params": {"argv": ["x"]}, "depends_on": []}
        for i in range(n_stages)
    ]
    original = World()
    original.submit(stages)
    done = data.draw(st.integers(0, n_stages - 1))
    for i in range(done):
        original.succeed(f"s{i}")
    partition = Partition()
    partition.fold(list(original.log))
    partition.take_snapshot(len(original.log))
    partition.restart()
    restored = World()
    restored.state = partition.states["p1"]
    restored.commands = list(original.commands)
    restored.now, restored._n = original.now, original._n  # the same input ids
    before = len(original.log), len(original.commands)
    for world in (original, restored):
        world.succeed(f"s{done}")
    assert restored.log  # the report was decided: events on the log
    assert restored.log == original.log[before[0] :]
    assert restored.commands[before[1] :] == original.commands[before[1] :]
    assert restored.state == original.state


def _snapshot_bytes() -> bytes:
    partition = Partition()
    partition.fold(HISTORIES["seed_pipeline"][:5])
    partition.take_snapshot(5)
    assert partition.snapshot is not None
    return partition.snapshot


def test_a_corrupt_snapshot_is_refused_never_misread():
    blob = _snapshot_bytes()
    for bad in (blob[:-7], blob[:1] + b"garbage", b"", None, b"A" + blob[1:], b"P" + b"\x00" * 9):
        with pytest.raises(SnapshotUnusable):
            decode_partition(bad)
    # A well-formed map of the wrong shape is refused as well.
    wrong = b"P" + zlib.compress(msgspec.msgpack.encode({"schema": 1, "partition": "x"}))
    with pytest.raises(SnapshotUnusable):
        decode_partition(wrong)


def _with_schema(blob: bytes, schema: int, **changes) -> bytes:
    data = msgspec.msgpack.decode(zlib.decompress(blob[1:]))
    data.update(schema=schema, **changes)
    return blob[:1] + zlib.compress(msgspec.msgpack.encode(data))


def test_an_older_snapshot_without_an_upcaster_is_refused_and_a_newer_one_too():
    blob = _snapshot_bytes()
    with pytest.raises(SnapshotUnusable, match="no upcaster from schema 0"):
        decode_partition(_with_schema(blob, 0))
    with pytest.raises(SnapshotUnusable, match="newer"):
        decode_partition(_with_schema(blob, snapshots.SCHEMA + 1))


def test_an_older_snapshot_is_upcast_through_the_chain(monkeypatch):
    blob = _snapshot_bytes()
    expected = decode_partition(blob)
    # Version 0 (made up here) called the offset "offset": its upcaster renames it.
    old = _with_schema(blob, 0, offset=expected.events_offset)
    data = msgspec.msgpack.decode(zlib.decompress(old[1:]))
    del data["events_offset"]
    old = old[:1] + zlib.compress(msgspec.msgpack.encode(data))

    def rename(d: dict) -> dict:
        return {**{k: v for k, v in d.items() if k != "offset"}, "events_offset": d["offset"]}

    monkeypatch.setitem(snapshots.UPCASTERS, 0, rename)
    upcast = decode_partition(old)
    assert upcast.events_offset == expected.events_offset
    assert upcast.states == expected.states


def test_the_snapshots_topic_is_compacted_and_partitioned_as_the_events_topic():
    from posttrain.events.topics import TOPICS, Topic

    snapshots, events = TOPICS[Topic.ORCHESTRATOR_SNAPSHOTS], TOPICS[Topic.PIPELINE_EVENTS]
    assert snapshots.partitions == events.partitions  # partition p holds p's snapshots
    assert snapshots.configs()["cleanup.policy"] == "compact"
    assert int(snapshots.configs()["max.message.bytes"]) >= 16 * 1024 * 1024
    assert TOPICS[Topic.STAGE_CACHE].cleanup_policy == "compact"


def test_only_ended_pipelines_with_nothing_in_flight_leave_memory():
    world = World()
    world.submit([{"name": "a", "task": "command", "params": {"argv": ["x"]}}])
    assert not archivable(world.state)  # running
    world.succeed("a")
    assert world.state.status == "succeeded" and archivable(world.state)
