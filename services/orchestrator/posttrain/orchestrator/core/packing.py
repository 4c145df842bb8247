"""Pipeline states as bytes: how a replay helper process hands the states it folded to the
orchestrator.

msgspec's msgpack writes and reads the state dataclasses as they are, ten times faster than
pickle does these slotted dataclasses (a share of 5,000 pipelines: 0.1 s to pack, 0.3 s to
unpack). A stage's definition travels as a plain map and comes back as the spec's view, as
replay reads it; a spec that was read as a model (an older version, upcast) comes back as a view
too, with the same values.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable
from typing import Any

import msgspec
from pydantic import BaseModel

from posttrain.events.messages import StageSpec
from posttrain.events.views import model_view
from posttrain.orchestrator.core.state import PipelineState

States = dict[int, dict[str, PipelineState]]  # by partition, then by pipeline id


def _model_as_map(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump()
    raise NotImplementedError(f"cannot pack {type(value).__name__}")


_encoder = msgspec.msgpack.Encoder(enc_hook=_model_as_map)
_decoder = msgspec.msgpack.Decoder(States)
_SPEC_VIEW = model_view(StageSpec)


def pack(states: States) -> bytes:
    return _encoder.encode(states)


def unpack(blob: bytes | memoryview | mmap.mmap) -> States:
    states = _decoder.decode(blob)
    for by_pipeline in states.values():
        restore_definitions(by_pipeline.values())
    return states


def restore_definitions(states: Iterable[PipelineState]) -> None:
    """Turn the stage definitions of states read back from msgpack (plain maps) into the spec's
    view, as replay reads them."""
    convert = msgspec.convert
    for state in states:
        for stage in state.stages.values():
            stage.definition = convert(stage.definition, _SPEC_VIEW)
