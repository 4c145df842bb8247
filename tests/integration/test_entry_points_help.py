"""Every entry point answers --help without starting anything: every console script declared in
a pyproject.toml of the repository, and every ``posttrain`` command. Each exits 0 with a usage
text, creates no topic and writes no file."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from posttrain.cli import DELEGATED, SERVICE_SUBCOMMANDS, app

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LIMIT_S = 60  # a help text that takes longer is starting something


def console_scripts() -> list[str]:
    names = []
    pyprojects = [
        ROOT / "pyproject.toml",
        *sorted(ROOT.glob("libs/*/pyproject.toml")),
        *sorted(ROOT.glob("services/*/pyproject.toml")),
    ]
    for pyproject in pyprojects:
        names += tomllib.loads(pyproject.read_text())["project"].get("scripts", {})
    return sorted(names)


def posttrain_commands() -> list[list[str]]:
    commands = [["posttrain"]]
    for info in app.registered_commands:
        commands.append(["posttrain", info.name or info.callback.__name__])
    for group in app.registered_groups:
        commands.append(["posttrain", group.name])
        for info in group.typer_instance.registered_commands:
            commands.append(["posttrain", group.name, info.name or info.callback.__name__])
    for name, subcommands in SERVICE_SUBCOMMANDS.items():
        commands += [["posttrain", name, sub] for sub in sorted(subcommands)]
    return commands


def test_the_lists_are_complete():
    scripts = console_scripts()
    assert {"posttrain", "posttrain-diagnostics", "posttrain-gateway", "posttrain-agent"} <= set(
        scripts
    )
    listed = {tuple(c) for c in posttrain_commands()}
    for name in [*DELEGATED, "submit", "status", "token", "metrics", "diagnose"]:
        assert ("posttrain", name) in listed, name
    assert ("posttrain", "token", "create") in listed


async def _topics(bootstrap: str, prefix: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return [t for t in await admin.list_topics() if t.startswith(prefix)]
    finally:
        await admin.close()


@pytest.mark.parametrize(
    "argv",
    [[s] for s in console_scripts()] + posttrain_commands(),
    ids=lambda argv: " ".join(argv),
)
async def test_help_starts_nothing(argv, base_kafka_settings, run_id, tmp_path):
    namespace = f"{run_id}-help"
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "POSTTRAIN_HOME": str(tmp_path / "home" / "posttrain"),
        "POSTTRAIN_TOPIC_NAMESPACE": namespace,
        "KAFKA_BOOTSTRAP_SERVERS": base_kafka_settings.bootstrap_servers,
        "DATABASE_URL": "postgresql://nobody:nothing@127.0.0.1:1/none",  # not to be used
    }
    (tmp_path / "home").mkdir()
    work = tmp_path / "cwd"
    work.mkdir()
    done = await asyncio.to_thread(
        subprocess.run,
        [str(BIN / argv[0]), *argv[1:], "--help"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=LIMIT_S,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "usage" in done.stdout.lower(), done.stdout
    assert list(work.iterdir()) == [] and list((tmp_path / "home").iterdir()) == []
    assert await _topics(base_kafka_settings.bootstrap_servers, namespace) == []
