"""A pipeline document (a pipeline file, or a body sent to the gateway; JSON or YAML), read into
what ``PipelineExecutor`` takes.

What the DAG validator checks (dependencies, cycles, tasks, params, references) is its job; this
only reads the document's shape, and names the field that is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson
import yaml

_PIPELINE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Values in a document, counted as they will be walked: YAML aliases are shared, not copied, so
# a small document can name 10^9 values ("billion laughs"); validating them would never end.
MAX_VALUES = 200_000


class DocumentError(ValueError):
    def __init__(self, field_: str, message: str) -> None:
        super().__init__(f"{field_}: {message}")
        self.field = field_
        self.message = message


@dataclass(frozen=True)
class PipelineDocument:
    stages: list[Any]
    name: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    pipeline_id: str | None = None


def is_yaml(content_type: str) -> bool:
    return "yaml" in content_type.lower()


def read_document(body: bytes, content_type: str) -> PipelineDocument:
    """A mapping with ``stages`` (and optional ``name``, ``settings``, ``pipeline_id``), or just
    the list of stages; YAML when ``content_type`` says so, else JSON."""
    try:
        doc = yaml.safe_load(body) if is_yaml(content_type) else orjson.loads(body)
    except (yaml.YAMLError, orjson.JSONDecodeError) as exc:
        kind = "YAML" if is_yaml(content_type) else "JSON"
        raise DocumentError("body", f"not {kind}: {exc}") from None
    if _too_many_values(doc):
        raise DocumentError("body", f"more than {MAX_VALUES:,} values (YAML aliases count)")
    if isinstance(doc, list):
        doc = {"stages": doc}
    if not isinstance(doc, dict):
        raise DocumentError("body", "expected a mapping with 'stages', or a list of stages")
    stages = doc.get("stages")
    if not isinstance(stages, list):
        raise DocumentError("stages", "required: a list of stages")
    name = doc.get("name")
    if name is not None and not isinstance(name, str):
        raise DocumentError("name", "must be a string")
    settings = doc.get("settings", {})
    if not isinstance(settings, dict):
        raise DocumentError("settings", "must be a mapping")
    pipeline_id = doc.get("pipeline_id")
    if pipeline_id is not None and (
        not isinstance(pipeline_id, str) or not _PIPELINE_ID.match(pipeline_id)
    ):
        raise DocumentError(
            "pipeline_id", "letters, digits, '.', '_' and '-', at most 128, not starting with '.'"
        )
    return PipelineDocument(stages=stages, name=name, settings=settings, pipeline_id=pipeline_id)


def _too_many_values(doc: Any) -> bool:
    pending = [doc]
    seen = 0
    while pending:
        value = pending.pop()
        seen += 1
        if seen > MAX_VALUES:
            return True
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False
