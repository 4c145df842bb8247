"""Which Kafka broker and PostgreSQL server the test suite runs against.

``POSTTRAIN_TEST_STACK`` chooses: unset, empty or ``local`` is the local stack (`posttrain stack
up`, or whatever ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` name); ``containers`` starts
both in Docker with testcontainers (`posttrain.testing.containers`) and points those two
variables at them. The choice and the Docker probe live here, apart from the containers
themselves, so that they can be tested on a machine without Docker.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

ENV_VAR = "POSTTRAIN_TEST_STACK"
PROBE_TIMEOUT_S = 10


class StackKind(StrEnum):
    """Where the suite's broker and database come from."""

    LOCAL = "local"
    CONTAINERS = "containers"


class StackChoiceError(Exception):
    """The requested stack cannot be used; the message says what to do."""


def choose_stack(env: Mapping[str, str]) -> StackKind:
    """The stack ``env`` asks for; an unknown value is refused, naming the allowed ones."""
    value = env.get(ENV_VAR, "").strip()
    if not value:
        return StackKind.LOCAL
    try:
        return StackKind(value)
    except ValueError:
        allowed = ", ".join(kind.value for kind in StackKind)
        raise StackChoiceError(
            f"{ENV_VAR}={value!r} is not a test stack: use one of {allowed} "
            f"(or leave it unset for {StackKind.LOCAL.value})"
        ) from None


def docker_engine_problem() -> str | None:
    """Why no Docker engine can be used, or None when one answers a ping.

    The probe goes through testcontainers' own client, so it finds the engine the way the
    containers will be started (``DOCKER_HOST``, ``~/.testcontainers.properties``, the current
    docker context, else the default socket)."""
    try:
        from testcontainers.core.docker_client import DockerClient
    except ImportError as exc:
        return f"testcontainers is not installed ({exc}); `make install` installs it"
    try:
        # A short timeout: an engine that does not answer within it is as good as absent.
        DockerClient(timeout=PROBE_TIMEOUT_S).client.ping()
    except Exception as exc:  # docker's, requests' and the socket's errors alike: all say "no"
        return f"{type(exc).__name__}: {exc}"
    return None


def no_docker_message(problem: str) -> str:
    """What a run asked to use containers is told when no engine answers."""
    return (
        f"{ENV_VAR}={StackKind.CONTAINERS.value} runs the tests against Kafka and PostgreSQL in "
        f"Docker containers, but no Docker engine is reachable ({problem}). Start Docker (or "
        f"point DOCKER_HOST at a running engine), or unset {ENV_VAR} to use the local stack "
        "(`posttrain stack up`)."
    )


def require_stack(env: Mapping[str, str]) -> StackKind:
    """The chosen stack, once it is known to be usable; StackChoiceError says why not."""
    kind = choose_stack(env)
    if kind is StackKind.CONTAINERS:
        problem = docker_engine_problem()
        if problem is not None:
            raise StackChoiceError(no_docker_message(problem))
    return kind
