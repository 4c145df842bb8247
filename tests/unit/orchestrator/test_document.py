"""Reading a pipeline document (a file, or a body sent to the gateway), naming the field that is
wrong."""

from __future__ import annotations

import pytest

from posttrain.orchestrator.core.document import DocumentError, read_document


def test_yaml_and_json_documents_read_alike():
    yaml_doc = b"name: p\nsettings: {a: 1}\nstages:\n  - {name: a, task: command}\n"
    json_doc = b'{"name": "p", "settings": {"a": 1}, "stages": [{"name": "a", "task": "command"}]}'
    assert read_document(yaml_doc, "application/yaml") == read_document(
        json_doc, "application/json"
    )
    bare = read_document(b'[{"name": "a", "task": "command"}]', "application/json")
    assert bare.stages == [{"name": "a", "task": "command"}] and bare.name is None


@pytest.mark.parametrize(
    ("body", "content_type", "field"),
    [
        (b"{not json", "application/json", "body"),
        (b"stages: [a\n", "text/yaml", "body"),
        (b'"just a string"', "application/json", "body"),
        (b'{"name": "p"}', "application/json", "stages"),
        (b'{"stages": [], "name": 3}', "application/json", "name"),
        (b'{"stages": [], "settings": [1]}', "application/json", "settings"),
        (b'{"stages": [], "pipeline_id": "../etc"}', "application/json", "pipeline_id"),
    ],
)
def test_a_malformed_document_names_its_field(body, content_type, field):
    with pytest.raises(DocumentError) as refused:
        read_document(body, content_type)
    assert refused.value.field == field


def test_a_yaml_alias_bomb_is_refused():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):  # 10^9 values named in under 1 KB
        previous = f"*a{level - 1}"
        lines.append(f"a{level}: &a{level} [{', '.join([previous] * 10)}]")
    lines.append("stages: [*a8]")
    with pytest.raises(DocumentError, match="values") as refused:
        read_document("\n".join(lines).encode(), "application/yaml")
    assert refused.value.field == "body"
