"""A service's ``--http`` value."""

from __future__ import annotations

import pytest

from posttrain.service.http import parse_address


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("off", None),
        ("127.0.0.1:9465", ("127.0.0.1", 9465)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        (":9464", ("127.0.0.1", 9464)),
        ("[::1]:9466", ("::1", 9466)),
    ],
)
def test_addresses(value: str, address: tuple[str, int] | None) -> None:
    assert parse_address(value) == address


@pytest.mark.parametrize("value", ["", "9465", "host:", "host:http", "host:70000", "on"])
def test_what_is_not_an_address_is_refused_with_the_value(value: str) -> None:
    with pytest.raises(ValueError, match="expected host:port or 'off'"):
        parse_address(value)
