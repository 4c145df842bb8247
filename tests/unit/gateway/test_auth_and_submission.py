"""Tokens and roles; reading a submitted document and naming the field that is wrong."""

from __future__ import annotations

import pytest

from posttrain.gateway.auth import Role, parse_tokens, role_of
from posttrain.gateway.submission import SubmissionError, read_submission


def test_tokens_carry_roles():
    tokens = parse_tokens("abc:operator, v-1:viewer,,")
    assert tokens == {"abc": Role.OPERATOR, "v-1": Role.VIEWER}
    assert role_of("Bearer abc", tokens) is Role.OPERATOR
    assert role_of("bearer v-1", tokens) is Role.VIEWER
    assert role_of("Bearer nope", tokens) is None
    assert role_of("Basic abc", tokens) is None
    assert role_of(None, tokens) is None
    assert Role.VIEWER < Role.OPERATOR


@pytest.mark.parametrize("spec", ["abc", "abc:admin", ":viewer"])
def test_a_bad_token_entry_is_named_without_the_token(spec):
    with pytest.raises(ValueError, match="token entry 1") as refused:
        parse_tokens(spec)
    assert "abc" not in str(refused.value)


def test_yaml_and_json_documents_read_alike():
    yaml_doc = b"name: p\nsettings: {a: 1}\nstages:\n  - {name: a, task: command}\n"
    json_doc = b'{"name": "p", "settings": {"a": 1}, "stages": [{"name": "a", "task": "command"}]}'
    assert read_submission(yaml_doc, "application/yaml") == read_submission(
        json_doc, "application/json"
    )
    bare = read_submission(b'[{"name": "a", "task": "command"}]', "application/json")
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
    with pytest.raises(SubmissionError) as refused:
        read_submission(body, content_type)
    assert refused.value.field == field


def test_a_yaml_alias_bomb_and_an_oversized_body_are_refused():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):  # 10^9 values named in under 1 KB
        previous = f"*a{level - 1}"
        lines.append(f"a{level}: &a{level} [{', '.join([previous] * 10)}]")
    lines.append("stages: [*a8]")
    with pytest.raises(SubmissionError, match="values") as refused:
        read_submission("\n".join(lines).encode(), "application/yaml")
    assert refused.value.field == "body"
    with pytest.raises(SubmissionError, match="bytes"):
        read_submission(b"[" + b" " * (2 << 20) + b"]", "application/json")
