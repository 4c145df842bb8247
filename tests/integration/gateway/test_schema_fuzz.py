"""Schemathesis against the gateway's own OpenAPI schema: requests generated from it, valid and
invalid, sent to a real gateway process on the real stack; none may get a server error."""

from __future__ import annotations

import asyncio

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from posttrain.testing import services

pytestmark = pytest.mark.integration

# A bounded budget: a few hundred requests, well under a minute on this machine.
EXAMPLES = 250


def _fuzz(base_url: str) -> list[str]:
    """Send the generated requests; the server errors found, as curl commands."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    # A live stream of a pipeline that does not exist waits for it to be submitted: it never
    # answers, by design, so it cannot be fuzzed by request and response.
    schema = schema.exclude(path_regex=r"/events$")
    strategy = st.one_of(
        schema.as_strategy(schemathesis.GenerationMode.POSITIVE),
        schema.as_strategy(schemathesis.GenerationMode.NEGATIVE),
    )
    errors: list[str] = []
    calls = 0

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def check(case) -> None:
        nonlocal calls
        calls += 1
        response = case.call(base_url=base_url, timeout=15)
        if response.status_code >= 500:
            errors.append(f"{response.status_code}: {case.as_curl_command()}")

    check()
    assert calls >= EXAMPLES // 2, f"only {calls} requests were generated"
    return errors


async def test_no_generated_request_gets_a_server_error(kafka_settings, database_url, tmp_path):
    gateway = services.gateway(kafka_settings, database_url, tmp_path / "gateway.log").start()
    try:
        await gateway.wait_ready(timeout=60)
        errors = await asyncio.to_thread(_fuzz, f"http://127.0.0.1:{gateway.port}")
    finally:
        gateway.stop()
    assert not errors, "\n".join(errors[:10]) + "\n" + gateway.tail()
