"""An entry point's command line: exit statuses as the shell sees them, bad options named."""

from __future__ import annotations

from typing import Annotated

import typer

from posttrain.service.commands import bad_option, command_app, run_app

app = command_app("A service.")
ran: list[int] = []


@app.command()
def serve(
    port: Annotated[int, typer.Option()] = 9,
    http: Annotated[str, typer.Option()] = "127.0.0.1:1",
) -> None:
    if http == "nowhere":
        raise bad_option("--http", "expected host:port")
    ran.append(port)
    if port == 3:
        raise typer.Exit(3)


def test_exit_statuses_and_help(capsys) -> None:
    assert run_app(app, ["--port", "7"], "svc") == 0 and ran == [7]
    assert run_app(app, ["--port", "3"], "svc") == 3
    assert run_app(app, ["--help"], "svc") == 0
    assert capsys.readouterr().out.startswith("Usage: svc [OPTIONS]")
    assert ran == [7, 3]  # --help ran nothing


def test_a_bad_option_is_refused_by_name(capsys) -> None:
    assert run_app(app, ["--port", "seven"], "svc") == 2
    assert "'--port'" in capsys.readouterr().err
    assert run_app(app, ["--http", "nowhere"], "svc") == 2
    assert "Invalid value for '--http': expected host:port" in capsys.readouterr().err
    assert run_app(app, ["--unknown"], "svc") == 2
