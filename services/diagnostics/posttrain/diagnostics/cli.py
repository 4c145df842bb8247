"""``posttrain diagnose ...``: ``main(argv)`` takes the arguments after ``diagnose``.

posttrain diagnose backtest (--job ID | --pipeline ID) [--policy FILE] [--json]
    what a detector configuration and action policy would have raised and done on stored metrics
posttrain diagnose anomalies (--job ID | --pipeline ID) [--json]
    the anomalies kept by the recorder, with the actions taken on each
posttrain diagnose record [--http HOST:PORT] [--no-migrate]
    run the recorder (posttrain-diagnostics-recorder)
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
import typer

from posttrain.diagnostics.recorder import record
from posttrain.diagnostics.settings import DiagnosticsSettings
from posttrain.service import settings
from posttrain.service.commands import DatabaseUrlOption, command_app, run_app

app = command_app("Diagnostics: backtest a policy on stored metrics, read kept anomalies.")
# The recorder's own command, under ``posttrain diagnose record``.
app.command("record", help="run the recorder")(record)

Job = Annotated[str | None, typer.Option(help="one training job")]
Pipeline = Annotated[str | None, typer.Option(help="every job of a pipeline")]
Json = Annotated[bool, typer.Option("--json", help="machine-readable output")]


@dataclass(frozen=True, slots=True)
class Target:
    """Which jobs a command reads (exactly one of ``job`` and ``pipeline``), and where."""

    job: str | None
    pipeline: str | None
    database_url: str
    json: bool


def _target(job: str | None, pipeline: str | None, database_url: str | None, json: bool) -> Target:
    if (job is None) == (pipeline is None):
        raise typer.BadParameter("give exactly one of them", param_hint="'--job' / '--pipeline'")
    return Target(job, pipeline, settings.database_url(database_url), json)


@app.command("backtest")
def backtest_command(
    job: Job = None,
    pipeline: Pipeline = None,
    database_url: DatabaseUrlOption = None,
    json: Json = False,
    policy: Annotated[
        str | None,
        typer.Option(
            help="a diagnostics configuration (JSON or YAML, as POSTTRAIN_DIAGNOSTICS_CONFIG); "
            "default: $POSTTRAIN_DIAGNOSTICS_CONFIG, else the defaults"
        ),
    ] = None,
) -> None:
    """What a detector configuration and action policy would have raised and done."""
    raise typer.Exit(_backtest(_target(job, pipeline, database_url, json), policy))


@app.command("anomalies")
def anomalies_command(
    job: Job = None,
    pipeline: Pipeline = None,
    database_url: DatabaseUrlOption = None,
    json: Json = False,
) -> None:
    """Kept anomalies with the actions taken on each."""
    raise typer.Exit(_anomalies(_target(job, pipeline, database_url, json)))


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, "posttrain diagnose")


def _backtest(args: Target, policy: str | None) -> int:
    from posttrain.diagnostics.alerts import load_config_book

    try:
        book = load_config_book(policy)
    except Exception as exc:  # a missing file, bad JSON/YAML, a key the schema refuses
        where = policy or DiagnosticsSettings().config
        print(f"error: policy {where}: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run_backtest(args, book))


async def _run_backtest(args: Target, book: Any) -> int:
    import asyncpg

    from posttrain.diagnostics.backtest import NoMetrics, print_table, run_backtest

    conn = await asyncpg.connect(args.database_url)
    try:
        results = await run_backtest(book, job_id=args.job, pipeline_id=args.pipeline, db=conn)
    except NoMetrics as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        await conn.close()
    if args.json:
        sys.stdout.write(orjson.dumps([r.to_dict() for r in results]).decode() + "\n")
    else:
        print_table(results, sys.stdout)
    return 0


def _anomalies(args: Target) -> int:
    from posttrain.diagnostics.queries import get_anomalies

    found = get_anomalies(
        job_id=args.job, pipeline_id=args.pipeline, database_url=args.database_url
    )
    if args.json:
        docs = [a.to_dict() for a in found]
        sys.stdout.write(orjson.dumps(docs, default=str).decode() + "\n")
        return 0
    for a in found:
        print(f"step {a.step}  {a.anomaly_type}  {a.severity}  job {a.job_id}: {a.message}")
        for x in a.actions:
            refusal = f": {x.refusal}" if x.refusal else ""
            print(f"    {x.action} {x.status}{refusal}")
    if not found:
        print("no anomalies kept", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
