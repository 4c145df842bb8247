"""The ``posttrain`` command line: submit and follow pipelines, read what the platform knows
(status, history, agents, metrics, diagnoses), steer pipelines, manage API tokens, and run the
local stack and the services.

Reads go straight to the PostgreSQL read models (``DATABASE_URL``) through the SDK; commands go
to the orchestrator over Kafka (``KAFKA_BOOTSTRAP_SERVERS``, ``POSTTRAIN_TOPIC_NAMESPACE``).
An error is one sentence saying what to do; ``POSTTRAIN_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from posttrain.service.commands import run_app
from posttrain.service.logs import without_password
from posttrain.service.settings import database_url

T = TypeVar("T")

app = typer.Typer(
    name="posttrain",
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
token_app = typer.Typer(help="API tokens for the gateway (stored hashed)", no_args_is_help=True)
stack_app = typer.Typer(help="the local Kafka broker and PostgreSQL server", no_args_is_help=True)
schema_app = typer.Typer(help="the message contracts", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(stack_app, name="stack")
app.add_typer(schema_app, name="schema")

# No markup or emoji codes in what we print: ids like "p:a:1" are shown as they are.
out = Console(highlight=False, markup=False, emoji=False)
err = Console(stderr=True, highlight=False, markup=False, emoji=False, soft_wrap=True)


class Refusal(Exception):
    """An error the user can act on: its message is the one sentence printed."""


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"posttrain: {message}", markup=False)
    raise typer.Exit(code)


def _database_url() -> str:
    return database_url()


def _kafka() -> Any:
    from posttrain.events.kafka import KafkaSettings

    return KafkaSettings.from_env(client_id="posttrain-cli")


def explain(exc: BaseException) -> str | None:
    """The one sentence for an error a user meets (None: not one we know)."""
    import asyncpg

    from posttrain.orchestrator.client import InvalidPipeline, UnknownPipeline

    if isinstance(exc, Refusal | UnknownPipeline):
        return str(exc)
    if isinstance(exc, InvalidPipeline):
        problems = "; ".join(
            f"stage {e.stage!r} field {e.field!r}: {e.message}" for e in exc.errors
        )
        return f"the pipeline is invalid, fix it and submit again: {problems}"
    database = without_password(_database_url())
    if isinstance(exc, asyncpg.InvalidCatalogNameError | asyncpg.InvalidPasswordError):
        return f"cannot use the database at {database} ({exc}): check DATABASE_URL"
    if isinstance(exc, asyncpg.UndefinedTableError):
        return (
            f"the database at {database} lacks the platform's tables ({exc}): "
            "run `posttrain stack up`, which applies the migrations"
        )
    kafka_error = _kafka_error(exc)
    if kafka_error:
        return kafka_error
    if isinstance(exc, OSError | asyncio.TimeoutError):
        return (
            f"the database at {database} is unreachable ({exc}): start the stack "
            "with `posttrain stack up` or set DATABASE_URL"
        )
    return None


def _kafka_error(exc: BaseException) -> str | None:
    try:
        from aiokafka.errors import KafkaConnectionError, KafkaError
    except ImportError:  # pragma: no cover - aiokafka comes with posttrain-events
        return None
    if isinstance(exc, KafkaConnectionError | KafkaError):
        return (
            f"the Kafka broker at {_kafka().bootstrap_servers} is unreachable ({exc}): start the "
            "stack with `posttrain stack up` or set KAFKA_BOOTSTRAP_SERVERS"
        )
    return None


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; an error a user can act on becomes one sentence, exit 1."""
    if not os.environ.get("POSTTRAIN_DEBUG"):
        # The Kafka client logs each failed connection attempt; the sentence below says it once.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(coroutine)
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as exc:
        if os.environ.get("POSTTRAIN_DEBUG"):
            raise
        fail(
            explain(exc)
            or f"unexpected error: {type(exc).__name__}: {exc} "
            "(POSTTRAIN_DEBUG=1 shows the traceback)"
        )


async def _connect() -> Any:
    import asyncpg

    return await asyncpg.connect(_database_url(), timeout=5)


def _json_out(value: Any) -> None:
    out.print_json(json.dumps(value, default=str))


# --- pipelines --------------------------------------------------------------------------------


@app.command()
def submit(
    file: Annotated[str, typer.Argument(help="a pipeline file (YAML or JSON)")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="follow it live until it ends")
    ] = False,
    pipeline_id: Annotated[
        str | None, typer.Option("--id", help="pipeline id (default: the file's, or a new one)")
    ] = None,
    interval: Annotated[float, typer.Option(help="seconds between looks when following")] = 0.5,
) -> None:
    """Validate and submit a pipeline file. Relative paths in stage params that exist next to
    the file are made absolute (so an agent started anywhere finds them), and each is shown.
    With --follow: stages by layer as they change, the latest metrics of running jobs, anomalies
    and actions as they happen; exit 0 if it succeeds, 1 otherwise."""
    from posttrain.orchestrator.client import PipelineExecutor
    from posttrain.pipeline_cli import load_pipeline_file

    if not os.path.isfile(file):
        fail(f"no pipeline file {file!r}: give the path of a YAML or JSON pipeline file")
    changes: list[str] = []
    try:
        doc = load_pipeline_file(file, say=changes.append)
    except SystemExit as exc:
        fail(f"cannot read {exc.code}; fix the file and submit again")
    for change in changes:
        err.print(f"made absolute: {change}", markup=False)

    async def send() -> dict[str, Any]:
        executor = PipelineExecutor(pipeline_id or doc.pipeline_id, submitted_by=_who())
        return await executor.aexecute(doc.stages, name=doc.name, settings=doc.settings)

    result = run(send())
    out.print(f"submitted {result['pipeline_uuid']}", markup=False)
    for i, layer in enumerate(result["layers"]):
        out.print(f"  layer {i}: {', '.join(layer)}", markup=False)
    if follow:
        from posttrain.follow import follow_pipeline

        final = run(
            follow_pipeline(
                result["pipeline_uuid"], _database_url(), _kafka(), out, interval_s=interval
            )
        )
        raise typer.Exit(0 if final == "succeeded" else 1)


def _who() -> str:
    """Who the CLI submits as: ``POSTTRAIN_USER``, else the login name."""
    import getpass

    try:
        return os.environ.get("POSTTRAIN_USER") or f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help="only pipelines of this status")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The latest pipelines, newest first."""
    from posttrain.orchestrator.client import alist_pipelines
    from posttrain.render import pipelines_table

    async def read() -> list[dict[str, Any]]:
        conn = await _connect()
        try:
            return await alist_pipelines(conn, status=status, limit=limit)
        finally:
            await conn.close()

    found = run(read())
    if as_json:
        _json_out(found)
    elif not found:
        out.print("no pipelines yet: `posttrain submit FILE` submits one", markup=False)
    else:
        out.print(pipelines_table(found))


@app.command()
def status(
    pipeline_id: Annotated[str, typer.Argument(metavar="PIPELINE", help="the pipeline's id")],
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="errors in full")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A pipeline's status: one line per stage (an error as one line; in full with --verbose),
    and a warning when the read model is stale (no live orchestrator, or behind the log)."""
    from posttrain.liveness import read_model_staleness
    from posttrain.orchestrator.client import aget_pipeline_status
    from posttrain.render import TERMINAL, status_view

    async def read() -> tuple[dict[str, Any] | None, str | None]:
        conn = await _connect()
        try:
            found = await aget_pipeline_status(pipeline_id, db=conn)
            if found is None:
                return None, None
            stale = await read_model_staleness(conn, _kafka(), terminal=found["status"] in TERMINAL)
            return found, stale
        finally:
            await conn.close()

    found, stale = run(read())
    if found is None:
        fail(
            f"no pipeline {pipeline_id!r}: check the id with `posttrain list` (a pipeline "
            "submitted a moment ago shows once the orchestrator has projected it)"
        )
    if as_json:
        _json_out({**found, "stale": stale})
        return
    out.print(status_view(found, verbose=verbose, stale=stale))


@app.command()
def history(
    pipeline_id: Annotated[str, typer.Argument(metavar="PIPELINE", help="the pipeline's id")],
    after: Annotated[
        int | None, typer.Option(help="only events after this sequence number")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 100,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A pipeline's history: its events with decisions, retries, anomalies and actions."""
    from posttrain.orchestrator.client import aget_pipeline_history
    from posttrain.render import history_table

    found = run(
        aget_pipeline_history(pipeline_id, after=after, limit=limit, database_url=_database_url())
    )
    if found is None:
        fail(f"no pipeline {pipeline_id!r}: check the id with `posttrain list`")
    if as_json:
        _json_out(found)
        return
    out.print(history_table(found["events"]))
    if found.get("next_after") is not None:
        out.print(
            f"more: posttrain history {pipeline_id} --after {found['next_after']}", markup=False
        )


@app.command()
def agents(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The trainer agents: capacity, labels, what each runs, its last heartbeat."""
    from posttrain.orchestrator.client import alist_agents
    from posttrain.render import agents_table

    found = run(alist_agents(database_url=_database_url()))
    if as_json:
        _json_out(found)
    elif not found:
        out.print("no agents have announced themselves: start one with `posttrain agent`")
    else:
        out.print(agents_table(found))


def _steer(pipeline_id: str, action: Callable[[Any], Coroutine[Any, Any, None]], what: str) -> None:
    from posttrain.orchestrator.client import PipelineExecutor

    run(action(PipelineExecutor(pipeline_id, submitted_by=_who())))
    out.print(
        f"{what} sent for {pipeline_id}; `posttrain status {pipeline_id}` shows it", markup=False
    )


@app.command()
def resume(
    pipeline_id: Annotated[str, typer.Argument(metavar="PIPELINE", help="the pipeline's id")],
) -> None:
    """Run again every failed, cancelled or lost stage (and what waits on them)."""
    _steer(pipeline_id, lambda e: e.aresume(), "resume")


@app.command()
def cancel(
    pipeline_id: Annotated[str, typer.Argument(metavar="PIPELINE", help="the pipeline's id")],
    reason: Annotated[
        str, typer.Option(help="why, for the record")
    ] = "cancelled from the command line",
) -> None:
    """Cancel a pipeline: its running stages are stopped."""
    _steer(pipeline_id, lambda e: e.acancel(reason), "cancel")


@app.command()
def retry(
    pipeline_id: Annotated[str, typer.Argument(metavar="PIPELINE", help="the pipeline's id")],
    stage: Annotated[str, typer.Argument(help="the stage to run again")],
) -> None:
    """Run one failed stage again."""
    _steer(pipeline_id, lambda e: e.aretry_stage(stage), f"retry of {stage}")


# --- metrics and diagnoses --------------------------------------------------------------------


def metrics_command(
    job: Annotated[
        str, typer.Argument(metavar="JOB", help="the training job's id (a stage's job id)")
    ],
    limit: Annotated[int, typer.Option(min=1, max=100000, help="the latest N points")] = 20,
    field: Annotated[
        list[str] | None, typer.Option("--field", help="fields to show (repeatable)")
    ] = None,
    chart: Annotated[bool, typer.Option("--chart", help="a chart per field instead")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A job's latest metric points as a table, or a small chart per field (--chart). Other
    forms: `posttrain metrics sync FILE`, `flush`, `latest JOB` (`posttrain metrics sync -h`)."""
    from posttrain.metrics_ingest.queries import get_latest_metrics
    from posttrain.render import metrics_chart, metrics_table

    async def read() -> list[dict[str, Any]]:
        conn = await _connect()
        try:
            points = await get_latest_metrics(job, limit, db=conn)
        finally:
            await conn.close()
        return [{"step": p.point.step, **p.point.model_dump(exclude_none=True)} for p in points]

    points = run(read())
    if as_json:
        _json_out(points)
    elif not points:
        fail(
            f"no metrics stored for job {job!r}: `posttrain status PIPELINE` shows each stage's job"
        )
    else:
        out.print((metrics_chart if chart else metrics_table)(points, field or ()))


app.command("metrics")(metrics_command)


def diagnose_command(
    job: Annotated[str, typer.Argument(metavar="JOB", help="the training job's id")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """What the detectors find in a job's stored metrics, and the anomalies the stream raised
    for it with the actions taken. Other forms: `posttrain diagnose backtest | anomalies |
    record` (`posttrain diagnose backtest -h`)."""
    from posttrain.diagnostics.batch import DiagnosticService
    from posttrain.render import diagnosis_view

    async def read() -> dict[str, Any]:
        service = DiagnosticService(_database_url())
        try:
            return await service.diagnose_job(job)
        finally:
            close = getattr(service, "aclose", None) or getattr(service, "close", None)
            if close is not None:
                result = close()
                if asyncio.iscoroutine(result):
                    await result

    result = run(read())
    if as_json:
        _json_out(result)
    else:
        out.print(diagnosis_view(result))


app.command("diagnose")(diagnose_command)


# --- tokens -----------------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="who holds it: recorded as submitted_by")],
    role: Annotated[str, typer.Option(help="viewer | submitter | admin")],
) -> None:
    """Make a token and print it once: only its hash is kept."""
    from posttrain.gateway.auth import Role, TokenError, create_token

    try:
        chosen = Role.parse(role)
    except ValueError as exc:
        fail(str(exc))

    async def make() -> str:
        conn = await _connect()
        try:
            return await create_token(conn, name, chosen)
        except TokenError as exc:
            raise Refusal(str(exc)) from None
        finally:
            await conn.close()

    token = run(make())
    err.print(
        f"token {name!r} ({chosen.name.lower()}) made; it is shown once, keep it now "
        "(send it as `Authorization: Bearer TOKEN`):",
        markup=False,
    )
    print(token)


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="the token's name")]) -> None:
    """Revoke a token at once, for every gateway."""
    from posttrain.gateway.auth import TokenError, revoke_token

    async def revoke() -> None:
        conn = await _connect()
        try:
            await revoke_token(conn, name)
        except TokenError as exc:
            raise Refusal(str(exc)) from None
        finally:
            await conn.close()

    run(revoke())
    out.print(f"token {name!r} revoked", markup=False)


@token_app.command("list")
def token_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every token's name, role, when it was made and revoked (never the token itself)."""
    from posttrain.gateway.auth import list_tokens
    from posttrain.render import plain_table, when

    async def read() -> list[Any]:
        conn = await _connect()
        try:
            return await list_tokens(conn)
        finally:
            await conn.close()

    found = run(read())
    if as_json:
        _json_out(
            [
                {
                    "name": t.name,
                    "role": t.role.name.lower(),
                    "created_at": t.created_at,
                    "revoked_at": t.revoked_at,
                }
                for t in found
            ]
        )
        return
    table = plain_table("name", "role", "created", "revoked")
    for t in found:
        table.add_row(t.name, t.role.name.lower(), when(t.created_at), when(t.revoked_at))
    out.print(table if found else "no tokens: `posttrain token create --name NAME --role ROLE`")


# --- the local stack, checks, contracts --------------------------------------------------------


SecureOption = Annotated[
    bool,
    typer.Option(
        "--secure",
        help="the secured broker: SASL (SCRAM) over TLS with a principal and ACLs per service, "
        "on 127.0.0.1:9192 (or KAFKA_BOOTSTRAP_SERVERS) with its own data",
    ),
]
ComponentsArgument = Annotated[
    list[str] | None,
    typer.Argument(metavar="[kafka|postgres]...", help="only these (default: both)"),
]


def _stack_exit(run: Callable[[], int]) -> None:
    try:
        code = run()
    except ValueError as exc:  # an unknown component
        raise typer.BadParameter(str(exc), param_hint="'COMPONENTS'") from None
    raise typer.Exit(code)


@stack_app.command("up")
def stack_up(components: ComponentsArgument = None, secure: SecureOption = False) -> None:
    """Fetch, start and prepare Kafka and PostgreSQL (idempotent)."""
    from posttrain.stack import commands

    _stack_exit(lambda: commands.up(components or None, secure_kafka=secure))


@stack_app.command("down")
def stack_down(components: ComponentsArgument = None, secure: SecureOption = False) -> None:
    """Stop what `stack up` started; data is kept."""
    from posttrain.stack import commands

    _stack_exit(lambda: commands.down(components or None, secure_kafka=secure))


@stack_app.command("status")
def stack_status(
    quiet: Annotated[bool, typer.Option("--quiet", help="print nothing, exit code only")] = False,
    secure: SecureOption = False,
) -> None:
    """What is running; exit 1 if not everything."""
    from posttrain.stack import commands

    raise typer.Exit(commands.status(quiet=quiet, secure_kafka=secure))


@app.command()
def doctor() -> None:
    """Check Java, the broker, topics, PostgreSQL and migrations."""
    from posttrain.doctor import run_doctor

    raise typer.Exit(run_doctor())


@schema_app.command("export")
def schema_export(directory: Annotated[str, typer.Argument(metavar="DIR")]) -> None:
    """Write one JSON Schema per message type."""
    from posttrain.events import schema

    written = schema.export_json_schemas(directory)
    print(f"wrote {len(written)} schemas to {directory}")


@schema_app.command("topics-doc")
def schema_topics_doc(output: Annotated[str, typer.Option()] = "-") -> None:
    """Print docs/topics.md from the registry."""
    from posttrain.events import schema

    text = schema.topics_markdown()
    if output == "-":
        sys.stdout.write(text)
    else:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)


# --- commands that belong to a service: the rest of the line is theirs ---------------------------

COMMANDS_GROUP = "posttrain.commands"
# How ``posttrain --help`` words the service commands it knows; another distribution's command
# is listed with its distribution's summary.
LISTED = {
    "pipeline": "the older forms: pipeline submit | status | resume | cancel | retry",
    "orchestrator": "run the orchestrator service",
    "gateway": "serve the HTTP API (submissions, status, live updates, control)",
    "agent": "run a trainer agent on this node",
}
# `metrics JOB` and `diagnose JOB` are ours; these first words belong to the service's own CLI.
SERVICE_SUBCOMMANDS = {
    "metrics": frozenset({"sync", "flush", "latest"}),
    "diagnose": frozenset({"backtest", "anomalies", "record"}),
}


def service_commands() -> dict[str, EntryPoint]:
    """The commands installed distributions declare in the ``posttrain.commands`` entry point
    group (name -> ``main(argv) -> int``), found without importing them: the root package
    imports no service, so no service that imports it is imported back."""
    return {found.name: found for found in entry_points(group=COMMANDS_GROUP)}


def _summary(found: EntryPoint) -> str:
    return LISTED.get(found.name) or (found.dist.metadata["Summary"] if found.dist else "")


# The commands whose whole line is the service's (``metrics`` and ``diagnose`` are ours too).
DELEGATED = {
    name: _summary(found)
    for name, found in sorted(service_commands().items())
    if name not in SERVICE_SUBCOMMANDS
}


def delegate(command: str, rest: list[str]) -> int:
    """Hand the rest of the command line to a service's own command line."""
    found = service_commands().get(command)
    if found is None:
        err.print(f"posttrain {command}: not installed here (no {COMMANDS_GROUP} entry point)")
        return 2
    try:
        service_main = found.load()
    except ImportError as exc:
        err.print(f"posttrain {command}: not installed here ({exc})", markup=False)
        return 2
    return int(service_main(rest) or 0)


def _listed(name: str, help_text: str) -> None:
    """A delegated command, listed in ``posttrain --help`` (main() hands it over before
    typer parses anything, so that its own --help is the service's)."""

    @app.command(
        name,
        help=help_text,
        add_help_option=False,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def delegated(ctx: typer.Context) -> None:
        raise typer.Exit(delegate(name, list(ctx.args)))


for _name, _help in DELEGATED.items():
    _listed(_name, _help)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in DELEGATED:
        return delegate(args[0], args[1:])
    if len(args) > 1 and args[0] in SERVICE_SUBCOMMANDS and args[1] in SERVICE_SUBCOMMANDS[args[0]]:
        return delegate(args[0], args[1:])
    return run_app(app, args, "posttrain")


if __name__ == "__main__":
    sys.exit(main())
