"""Snapshots of the orchestrator's state, as the bytes of the compacted snapshots topic.

A partition snapshot is the state of one events partition up to an offset of the events topic:
the pipelines still in memory, the pipelines that ended and were archived (each one's final state
is a record of its own in the snapshots topic, found again by its offset there), and the stage
cache those archived pipelines provide. Replaying from a snapshot folds only the events from its
offset on; an event there for an archived pipeline first brings that pipeline's archived state
back (``pipelines_to_restore``).

Each value is a kind byte (``P`` a partition, ``A`` an archived pipeline), then zlib-compressed
msgpack with a ``schema`` number. A snapshot of an older schema goes through the chain of
``UPCASTERS`` (none yet: version 1 is the first); one that cannot be read as this version, or
upcast to it, raises ``SnapshotUnusable`` and the caller folds the log instead. A snapshot is an
optimisation, never a second source of truth.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import msgspec

from posttrain.orchestrator.core.decide import CacheEntry, cache_entries
from posttrain.orchestrator.core.packing import restore_definitions
from posttrain.orchestrator.core.state import ACTIVE, PipelineState, PipelineStatus

SCHEMA = 1
PARTITION = b"P"
ARCHIVED = b"A"

# Upcasters by the schema they read: each turns a decoded snapshot map of version n into one of
# version n + 1. Keep every one ever written, so any older snapshot reaches SCHEMA.
T = TypeVar("T")
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
UPCASTERS: dict[int, Upcaster] = {}


class SnapshotUnusable(ValueError):
    """A snapshot that cannot stand for the log: corrupt, or of a schema this code cannot read."""


class PartitionSnapshot(msgspec.Struct, kw_only=True):
    """The state of one events partition, standing for every event before ``events_offset``."""

    partition: int
    events_offset: int  # the next offset of the events topic: the replay goes on from there
    states: dict[str, PipelineState]  # pipelines in memory (running, or ended but not archived)
    archived: dict[str, int]  # ended pipelines out of memory: id -> their record's offset
    cache: dict[str, CacheEntry]  # the stage cache entries the archived pipelines provide
    schema: int = SCHEMA


class _ArchivedPipeline(msgspec.Struct, kw_only=True):
    state: PipelineState
    schema: int = SCHEMA


class _Head(msgspec.Struct):
    schema: int


def _as_map(value: Any) -> Any:
    if isinstance(value, msgspec.Struct | dict):
        return value
    if hasattr(value, "model_dump"):  # a stage spec read as a model (upcast events)
        return value.model_dump()
    raise NotImplementedError(f"cannot snapshot {type(value).__name__}")


_encoder = msgspec.msgpack.Encoder(enc_hook=_as_map)
_head = msgspec.msgpack.Decoder(_Head)
_partition = msgspec.msgpack.Decoder(PartitionSnapshot)
_archived = msgspec.msgpack.Decoder(_ArchivedPipeline)


def encode_partition(snapshot: PartitionSnapshot) -> bytes:
    # Level 1: most of the size gone for little time (the snapshot is written in a transaction).
    return PARTITION + zlib.compress(_encoder.encode(snapshot), 1)


def encode_archived(state: PipelineState) -> bytes:
    return ARCHIVED + zlib.compress(_encoder.encode(_ArchivedPipeline(state=state)), 1)


def kind(value: bytes | None) -> bytes:
    """``PARTITION``, ``ARCHIVED`` or b"" (not a snapshot)."""
    return value[:1] if value else b""


def decode_partition(value: bytes | None) -> PartitionSnapshot:
    """The partition snapshot in ``value``, upcast to this schema; ``SnapshotUnusable`` else."""
    snapshot = _decode(value, PARTITION, _partition, PartitionSnapshot)
    restore_definitions(snapshot.states.values())
    return snapshot


def decode_archived(value: bytes | None) -> PipelineState:
    """The archived pipeline state in ``value``; ``SnapshotUnusable`` if it cannot be read."""
    state = _decode(value, ARCHIVED, _archived, _ArchivedPipeline).state
    restore_definitions([state])
    return state


def _decode(
    value: bytes | None, expected: bytes, decoder: msgspec.msgpack.Decoder[T], cls: type[T]
) -> T:
    if kind(value) != expected:
        raise SnapshotUnusable(f"not a {expected.decode()} snapshot record")
    assert value is not None
    try:
        raw = zlib.decompress(value[1:])
        schema = _head.decode(raw).schema
        if schema == SCHEMA:
            return decoder.decode(raw)
        if schema > SCHEMA:
            raise SnapshotUnusable(f"schema {schema} is newer than this code's {SCHEMA}")
        data: dict[str, Any] = msgspec.msgpack.decode(raw)
        for version in range(schema, SCHEMA):
            upcast = UPCASTERS.get(version)
            if upcast is None:
                raise SnapshotUnusable(f"no upcaster from schema {version} to {version + 1}")
            data = upcast(data)
            data["schema"] = version + 1
        return msgspec.convert(data, cls)
    except (zlib.error, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SnapshotUnusable(f"unreadable snapshot: {exc}") from exc


def archivable(state: PipelineState) -> bool:
    """Whether a pipeline may leave memory: it ended and no attempt of it may still report."""
    return state.status != PipelineStatus.RUNNING and not any(
        stage.status in ACTIVE for stage in state.stages.values()
    )


def cache_of(states: Iterable[PipelineState]) -> dict[str, CacheEntry]:
    """The stage cache entries these pipelines provide."""
    return {e.key: e.entry for state in states for e in cache_entries(state)}


def pipelines_to_restore(
    pipeline_ids: Iterable[str],
    states: Mapping[str, PipelineState],
    archived: Mapping[str, int],
) -> dict[str, int]:
    """The archived pipelines among ``pipeline_ids`` (not in memory), with their offsets: they
    come back before an event or a message about them is applied."""
    return {pid: archived[pid] for pid in pipeline_ids if pid not in states and pid in archived}
