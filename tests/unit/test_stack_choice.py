"""POSTTRAIN_TEST_STACK: the local stack by default, containers on request, and a run that cannot
have what it asked for stops before any test with one message saying what to do.

This machine has no Docker engine; the containers themselves are not started here. A Docker
engine that exists elsewhere is hidden from these tests by pointing DOCKER_HOST at a socket
that does not exist (and HOME at an empty folder, so that no ~/.testcontainers.properties
names another).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.stack.config import KafkaAddress, render_server_properties
from posttrain.testing.stack_choice import (
    ENV_VAR,
    StackChoiceError,
    StackKind,
    choose_stack,
    require_stack,
)

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 60


@pytest.mark.parametrize("env", [{}, {ENV_VAR: ""}, {ENV_VAR: "local"}, {ENV_VAR: " local "}])
def test_the_local_stack_unless_asked_otherwise(env: dict[str, str]) -> None:
    assert choose_stack(env) is StackKind.LOCAL
    # The local choice needs no Docker engine: nothing is probed.
    assert require_stack(env) is StackKind.LOCAL


def test_containers_on_request() -> None:
    assert choose_stack({ENV_VAR: "containers"}) is StackKind.CONTAINERS


@pytest.mark.parametrize("value", ["docker", "Containers", "local,containers"])
def test_an_unknown_value_is_refused_naming_the_allowed_ones(value: str) -> None:
    with pytest.raises(StackChoiceError) as refused:
        choose_stack({ENV_VAR: value})
    message = str(refused.value)
    assert f"{ENV_VAR}={value!r}" in message
    assert "use one of local, containers" in message


def _without_docker(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock", "HOME": str(home)}


def test_containers_without_a_docker_engine_say_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", _without_docker(tmp_path)["DOCKER_HOST"])
    with pytest.raises(StackChoiceError) as refused:
        require_stack({ENV_VAR: "containers"})
    message = str(refused.value)
    assert "no Docker engine is reachable" in message
    assert "Start Docker" in message
    assert f"unset {ENV_VAR} to use the local stack" in message


def _pytest(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """A pytest run of this repository's suite (its conftest), as a user would start it."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def _environment(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env.update(overrides)
    return env


def test_a_run_asking_for_containers_without_docker_stops_before_any_test(tmp_path: Path) -> None:
    env = _environment(**{ENV_VAR: "containers"}, **_without_docker(tmp_path))
    run = _pytest(env, "tests/unit/test_codec.py")
    output = run.stdout + run.stderr
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert output.count("no Docker engine is reachable") == 1, output
    assert f"unset {ENV_VAR}" in output
    # Stopped at once: nothing was collected or run, and no stack was touched.
    assert "collected" not in output and "passed" not in output, output
    assert "hygiene" not in output, output


def test_a_run_with_an_unknown_stack_stops_naming_the_allowed_ones() -> None:
    run = _pytest(_environment(**{ENV_VAR: "kubernetes"}), "tests/unit/test_codec.py")
    output = run.stdout + run.stderr
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert f"{ENV_VAR}='kubernetes' is not a test stack: use one of local, containers" in output
    assert "collected" not in output, output


def test_by_default_a_run_uses_the_addresses_the_environment_names(tmp_path: Path) -> None:
    # Addresses where nothing listens: the run must report them as they are (no container was
    # started in their place), and the hygiene check finds no stack to read.
    env = _environment(
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
        DATABASE_URL="postgresql://nobody:nothing@127.0.0.1:2/none",
        **_without_docker(tmp_path),
    )
    run = _pytest(env, "--collect-only", "tests/unit/test_codec.py")
    output = run.stdout + run.stderr
    assert run.returncode == pytest.ExitCode.OK, output
    assert "test stack: local (Kafka at 127.0.0.1:1, PostgreSQL at 127.0.0.1:2)" in output


def test_the_containers_broker_is_configured_like_the_local_one() -> None:
    # Imported here: the module needs testcontainers (a dev dependency), not a Docker engine.
    from posttrain.testing.containers import kafka_environment

    local: dict[str, str] = {}
    rendered = render_server_properties(KafkaAddress("127.0.0.1", 9092), Path("/data"))
    for line in rendered.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            local[key] = value
    container = {
        name.removeprefix("KAFKA_").lower().replace("_", "."): value
        for name, value in kafka_environment().items()
        if name.startswith("KAFKA_")
    }
    # Addresses and listeners differ by construction (Docker maps the client port; the broker
    # talks to itself on a listener of its own); every other setting is the local stack's.
    differing = {
        "listeners",
        "advertised.listeners",
        "controller.quorum.voters",
        "inter.broker.listener.name",
        "listener.security.protocol.map",
        "log.dirs",
    }
    assert {k: v for k, v in local.items() if k not in differing} == {
        k: v for k, v in container.items() if k not in differing
    }


def test_the_containers_addresses_reach_every_settings_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What the session exports when it starts containers is what the fixtures' settings and
    # every service read: nothing downstream needs to know which stack it runs on.
    from posttrain.events.kafka import KafkaSettings
    from posttrain.service.settings import database_url
    from posttrain.testing.containers import StackAddresses

    addresses = StackAddresses(
        bootstrap_servers="127.0.0.1:32771",
        database_url="postgresql://posttrain:posttrain@127.0.0.1:32772/posttrain",
    )
    for name, value in addresses.environment().items():
        monkeypatch.setenv(name, value)
    assert KafkaSettings.from_env().bootstrap_servers == addresses.bootstrap_servers
    assert database_url() == addresses.database_url
