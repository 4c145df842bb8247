"""Tokens and roles."""

from __future__ import annotations

import pytest

from posttrain.gateway.auth import Role, parse_tokens, role_of


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
