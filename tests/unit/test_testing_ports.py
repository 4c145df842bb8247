"""``posttrain.testing.services.free_port``: the ports handed to the services of a test."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from posttrain.testing import services


class _Offering(socket.socket):
    """A socket whose bind(0) gets the ports of ``offers`` in turn, as a kernel may: the same
    one twice while the first taker has not bound it yet."""

    offers: list[int] = []

    def bind(self, address: Any) -> None:
        self._offered = self.offers.pop(0)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self._offered)


def test_a_port_is_handed_out_once_even_when_the_kernel_offers_it_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(services, "_handed_out", set(), raising=False)
    monkeypatch.setattr(_Offering, "offers", [40001, 40001, 40001, 40002])
    monkeypatch.setattr(socket, "socket", _Offering)

    assert [services.free_port(), services.free_port()] == [40001, 40002]


def test_real_ports_are_distinct_and_bindable() -> None:
    ports = [services.free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))  # nothing took it meanwhile
