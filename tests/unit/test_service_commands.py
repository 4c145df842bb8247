"""The root command line finds the services' commands through the ``posttrain.commands`` entry
points, and imports no service to list or hand them over."""

from __future__ import annotations

import subprocess
import sys

from posttrain.cli import DELEGATED, SERVICE_SUBCOMMANDS, delegate, service_commands

SERVICES = (
    "posttrain.orchestrator",
    "posttrain.gateway",
    "posttrain.metrics_ingest",
    "posttrain.diagnostics",
    "posttrain.trainer_agent",
)


def test_each_installed_service_declares_its_command():
    found = {name: entry.value for name, entry in service_commands().items()}
    assert found == {
        "agent": "posttrain.trainer_agent.cli:main",
        "diagnose": "posttrain.diagnostics.cli:main",
        "gateway": "posttrain.gateway.main:main",
        "metrics": "posttrain.metrics_ingest.cli:main",
        "orchestrator": "posttrain.orchestrator.shell.main:main",
        "pipeline": "posttrain.pipeline_cli:main",
    }
    # metrics and diagnose share their first word with the root's own `metrics JOB`.
    assert set(DELEGATED) == set(found) - set(SERVICE_SUBCOMMANDS)


def test_the_root_command_line_imports_no_service():
    code = (
        "import sys, posttrain.cli; "
        f"print(sorted(m for m in sys.modules if m.startswith({SERVICES!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_command_no_distribution_declares_is_refused(capsys):
    assert delegate("no-such-service", ["--help"]) == 2
    assert "not installed here" in capsys.readouterr().err


def test_a_service_command_gets_the_rest_of_the_line(capsys):
    # `posttrain metrics flush --url ...` reaches the ingest's own command line: nothing
    # listens on port 1, and the ingest's CLI says so.
    assert delegate("metrics", ["flush", "--url", "http://127.0.0.1:1/flush"]) == 1
    assert "no ingest service answered at http://127.0.0.1:1/flush" in capsys.readouterr().err


def test_a_password_on_the_command_line_is_refused_naming_the_option(capsys):
    # Anyone on the machine reads a process's command line; the service stops before it starts.
    from posttrain.diagnostics.recorder import main

    code = main(["--database-url", "postgresql://u:secret@127.0.0.1:1/db", "--http", "off"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--database-url" in err and "password" in err and "PGPASSWORD" in err
