"""Process entry: run the orchestrator until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import typer

from posttrain.events.kafka import KafkaSettings
from posttrain.orchestrator.shell.endpoints import routes
from posttrain.orchestrator.shell.replay import (
    DEFAULT_PARALLEL_FROM,
    DEFAULT_PROCESSES,
    ReplayHelpers,
)
from posttrain.orchestrator.shell.service import GROUP, Orchestrator
from posttrain.orchestrator.shell.snapshots import (
    DEFAULT_EVERY_EVENTS,
    DEFAULT_EVERY_S,
    SnapshotPolicy,
)
from posttrain.service import settings as service_settings
from posttrain.service.collector import EVENT_LOOP_THRESHOLDS, quiet_collector
from posttrain.service.commands import DatabaseUrlOption, bad_option, command_app, run_app
from posttrain.service.http import EndpointServer, parse_address
from posttrain.service.logs import configure_json_logging, without_password

log = logging.getLogger("posttrain.orchestrator")

# Beside the metrics ingest (9464) and the trainer agent (9466), so one host can run all three.
DEFAULT_HTTP = "127.0.0.1:9465"


@dataclass(frozen=True, slots=True)
class Options:
    """What the command line asked for."""

    tick_interval: float
    silence_intervals: float
    session_timeout_ms: int
    replay_processes: int
    replay_parallel_from: int
    snapshots: SnapshotPolicy | None
    projection: bool
    database_url: str
    http: tuple[str, int] | None
    instance_id: str | None = None
    projection_max_pipelines: int | None = None


async def start_http(
    orchestrator: Orchestrator, address: tuple[str, int] | None
) -> EndpointServer | None:
    if address is None:
        return None
    host, port = address
    server = EndpointServer(routes(orchestrator), host, port)
    try:
        port = await server.start()
    except OSError as exc:
        # A busy port must not keep the orchestrator from its pipelines: it runs without
        # /healthz, says so here, and whoever probes it sees the probe fail.
        log.warning("no http endpoints", extra={"host": host, "port": port, "error": str(exc)})
        return None
    log.info("http endpoints listening", extra={"host": host, "port": port})
    return server


def start_helpers(args: Options) -> ReplayHelpers | None:
    """The replay helpers, started. Called before the event loop and any thread, so that each
    is a fork of this process (a few milliseconds) instead of a new interpreter (a second of
    imports) when the first long replay needs it."""
    if args.replay_processes <= 0:
        return None
    helpers = ReplayHelpers(args.replay_processes, min_events=args.replay_parallel_from)
    helpers.start()
    return helpers


async def serve(args: Options, helpers: ReplayHelpers | None = None) -> None:
    quiet_collector(EVENT_LOOP_THRESHOLDS, freeze=False)
    settings = KafkaSettings.from_env(client_id="orchestrator")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    orchestrator = Orchestrator(
        settings,
        tick_interval_s=args.tick_interval,
        silence_intervals=args.silence_intervals,
        session_timeout_ms=args.session_timeout_ms,
        replay_processes=args.replay_processes,
        replay_parallel_from=args.replay_parallel_from,
        snapshots=args.snapshots,
        instance_id=args.instance_id,
        helpers=helpers,
    )
    await orchestrator.start()
    http = await start_http(orchestrator, args.http)
    tasks = [asyncio.create_task(orchestrator.run(stop), name="orchestrator")]
    if args.projection:
        from posttrain.orchestrator.shell.projection import Projection

        projection = Projection(
            settings,
            args.database_url,
            silence_intervals=args.silence_intervals,
            max_pipelines=args.projection_max_pipelines,
        )
        await projection.start()
        tasks.append(asyncio.create_task(projection.run(stop), name="projection"))
    identity = {
        "group": settings.group(GROUP),
        "instance_id": args.instance_id,
        "namespace": settings.namespace,
        "kafka": settings.bootstrap_servers,
        "http": f"{http.host}:{http.port}" if http is not None else None,
        "projection": without_password(args.database_url) if args.projection else None,
        "pid": os.getpid(),
    }
    log.info("orchestrator started", extra=identity)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        stop.set()
        if http is not None:
            await http.stop()
        await orchestrator.stop()
        log.info("orchestrator stopped", extra=identity)


app = command_app(__doc__)


@app.command()
def run(
    tick_interval: Annotated[float, typer.Option()] = 1.0,
    silence_intervals: Annotated[
        float, typer.Option(help="heartbeat intervals without news before an agent counts as lost")
    ] = 3.0,
    session_timeout_ms: Annotated[
        int,
        typer.Option(
            help="how soon a crashed instance's partitions move to another one "
            "(the broker's group.min.session.timeout.ms is the floor)"
        ),
    ] = 6000,
    replay_processes: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="helper processes that fold shares of a long event log while this one folds "
            f"its own, when partitions are assigned (default {DEFAULT_PROCESSES}: one fewer "
            "than the CPUs, at most 3; 0: fold in this process only)",
        ),
    ] = DEFAULT_PROCESSES,
    replay_parallel_from: Annotated[
        int,
        typer.Option(
            metavar="EVENTS",
            help="the shortest log the helpers take shares of; shorter ones fold here alone "
            f"(default {DEFAULT_PARALLEL_FROM:,})",
        ),
    ] = DEFAULT_PARALLEL_FROM,
    snapshots: Annotated[
        bool,
        typer.Option(
            "--snapshots/--no-snapshots",
            help="snapshot each partition's state to the snapshots topic, so that a restart "
            "folds only the events after the latest one, and ended pipelines leave memory",
        ),
    ] = True,
    snapshot_every_events: Annotated[
        int,
        typer.Option(metavar="EVENTS", min=1, help="snapshot a partition after this many events"),
    ] = DEFAULT_EVERY_EVENTS,
    snapshot_every_s: Annotated[
        float,
        typer.Option(
            metavar="SECONDS", min=0.0, help="... or this long after its first unsnapshotted event"
        ),
    ] = DEFAULT_EVERY_S,
    projection: Annotated[
        bool,
        typer.Option("--projection/--no-projection", help="project pipelines into PostgreSQL"),
    ] = True,
    projection_max_pipelines: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            min=1,
            help="running pipelines the projection keeps in memory at most; beyond it the least "
            "recently changed leave, and come back from their rows when an event about them "
            "arrives (default: no bound; ended pipelines always leave once written)",
        ),
    ] = None,
    database_url: DatabaseUrlOption = None,
    http: Annotated[
        str,
        typer.Option(
            metavar="HOST:PORT",
            help=f"where to serve /healthz and /metrics (default {DEFAULT_HTTP}; "
            "port 0: any free port, logged; 'off': none)",
        ),
    ] = DEFAULT_HTTP,
    instance_id: Annotated[
        str | None,
        typer.Option(
            envvar="POSTTRAIN_ORCHESTRATOR_INSTANCE_ID",
            help="a stable identity in the consumer group (e.g. the pod name of a StatefulSet): "
            "restarted under it, the instance takes its partitions back at once, not after "
            "--session-timeout-ms; without it, a crashed instance's partitions wait for that "
            "timeout",
        ),
    ] = None,
) -> None:
    """Run the orchestrator until SIGTERM/SIGINT."""
    try:
        address = parse_address(http)
    except ValueError as exc:
        raise bad_option("--http", str(exc)) from None
    options = Options(
        tick_interval=tick_interval,
        silence_intervals=silence_intervals,
        session_timeout_ms=session_timeout_ms,
        replay_processes=replay_processes,
        replay_parallel_from=replay_parallel_from,
        snapshots=(
            SnapshotPolicy(every_events=snapshot_every_events, every_s=snapshot_every_s)
            if snapshots
            else None
        ),
        projection=projection,
        projection_max_pipelines=projection_max_pipelines,
        database_url=service_settings.database_url(database_url),
        http=address,
        instance_id=instance_id or None,
    )
    configure_json_logging(service_settings.ServiceSettings().log_level)
    asyncio.run(serve(options, start_helpers(options)))


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, "posttrain orchestrator")
