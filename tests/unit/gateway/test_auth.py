"""Tokens and roles: what may be done by whom, and how a token is read from a header."""

from __future__ import annotations

import pytest

from posttrain.gateway.auth import Principal, Role, bearer_token, token_hash


def test_roles_are_ordered_and_parsed_by_name():
    assert Role.VIEWER < Role.SUBMITTER < Role.ADMIN
    assert Role.parse(" Submitter ") is Role.SUBMITTER
    with pytest.raises(ValueError, match="viewer, submitter, admin"):
        Role.parse("operator")


def test_a_submitter_steers_only_its_own_pipelines_and_an_admin_every_one():
    alice = Principal("alice", Role.SUBMITTER)
    assert alice.may_steer("alice")
    assert not alice.may_steer("bob")
    assert not alice.may_steer(None)
    assert not Principal("alice", Role.VIEWER).may_steer("alice")
    assert Principal("root", Role.ADMIN).may_steer("bob")
    assert Principal("root", Role.ADMIN).may_steer(None)


def test_the_bearer_token_is_read_from_the_header():
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None


def test_only_a_digest_of_the_token_is_kept():
    digest = token_hash("abc")
    assert len(digest) == 32 and b"abc" not in digest
    assert token_hash("abc") == digest != token_hash("abd")
