"""A service's command line: a typer app, run with an explicit argument list.

Every entry point (``posttrain-gateway``, ``python -m posttrain.orchestrator``, ``posttrain
agent``...) is a typer app made by ``command_app`` and run by ``run_app``, so ``--help``,
errors in options and exit codes read the same in each, and ``--help`` starts nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated
from urllib.parse import urlsplit

import typer


def _no_password(value: str | None) -> str | None:
    """A command line is readable by every user of the machine (``ps``, ``/proc``): refuse a
    URL that carries its password there; the environment or a password file carry it."""
    if value and urlsplit(value).password:
        raise typer.BadParameter(
            "a password on the command line is visible to every user of the machine; "
            "leave it out and set DATABASE_URL (the whole URL), PGPASSWORD, or a password "
            "file (~/.pgpass or PGPASSFILE)",
            param_hint="'--database-url'",
        )
    return value


# ``--database-url`` as every service spells it; None: ``settings.database_url()`` decides.
DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="default: DATABASE_URL, else the local stack's; without a password (from "
        "DATABASE_URL, PGPASSWORD or a password file)",
        callback=_no_password,
    ),
]


def command_app(help_text: str | None = None) -> typer.Typer:
    """A typer app with the house settings: no shell completion options, plain help text (ids
    like ``p:a:1`` shown as they are), tracebacks as Python prints them."""
    return typer.Typer(
        help=help_text,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )


def run_app(app: typer.Typer, argv: Sequence[str] | None, prog_name: str) -> int:
    """Run ``app`` on ``argv`` (default: this process's arguments); its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = app(args=args, prog_name=prog_name)
    except SystemExit as exc:
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else 1
    return int(result or 0)


def bad_option(option: str, message: str) -> typer.BadParameter:
    """A refused option value, named in the message (exit 2, as for any bad option)."""
    return typer.BadParameter(message, param_hint=f"'{option}'")
