"""Process entry: run the orchestrator until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Sequence

from posttrain.events.kafka import KafkaSettings
from posttrain.orchestrator.client import DEFAULT_DATABASE_URL
from posttrain.orchestrator.shell.endpoints import routes
from posttrain.orchestrator.shell.replay import DEFAULT_PARALLEL_FROM, DEFAULT_PROCESSES
from posttrain.orchestrator.shell.service import GROUP, Orchestrator
from posttrain.service.http import EndpointServer, parse_address
from posttrain.service.logs import configure_json_logging, without_password

log = logging.getLogger("posttrain.orchestrator")

# Beside the metrics ingest (9464) and the trainer agent (9466), so one host can run all three.
DEFAULT_HTTP = "127.0.0.1:9465"


def http_address(value: str) -> tuple[str, int] | None:
    try:
        return parse_address(value)
    except ValueError as exc:  # argparse shows this one's message, not a generic one
        raise argparse.ArgumentTypeError(str(exc)) from None


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


async def serve(args: argparse.Namespace) -> None:
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
    )
    await orchestrator.start()
    http = await start_http(orchestrator, args.http)
    tasks = [asyncio.create_task(orchestrator.run(stop), name="orchestrator")]
    if args.projection:
        from posttrain.orchestrator.shell.projection import Projection

        projection = Projection(
            settings, args.database_url, silence_intervals=args.silence_intervals
        )
        await projection.start()
        tasks.append(asyncio.create_task(projection.run(stop), name="projection"))
    identity = {
        "group": settings.group(GROUP),
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="posttrain orchestrator", description=__doc__)
    parser.add_argument("--tick-interval", type=float, default=1.0)
    parser.add_argument(
        "--silence-intervals",
        type=float,
        default=3.0,
        help="heartbeat intervals without news before an agent counts as lost",
    )
    parser.add_argument(
        "--session-timeout-ms",
        type=int,
        default=6000,
        help="how soon a crashed instance's partitions move to another one "
        "(the broker's group.min.session.timeout.ms is the floor)",
    )
    parser.add_argument(
        "--replay-processes",
        type=int,
        default=DEFAULT_PROCESSES,
        metavar="N",
        help="helper processes that fold shares of a long event log while this one folds its "
        f"own, when partitions are assigned (default {DEFAULT_PROCESSES}: one fewer than "
        "the CPUs, at most 3; 0: fold in this process only)",
    )
    parser.add_argument(
        "--replay-parallel-from",
        type=int,
        default=DEFAULT_PARALLEL_FROM,
        metavar="EVENTS",
        help="the shortest log the helpers take shares of; shorter ones fold here alone "
        f"(default {DEFAULT_PARALLEL_FROM:,})",
    )
    parser.add_argument(
        "--no-projection",
        dest="projection",
        action="store_false",
        help="do not project pipelines into PostgreSQL",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL),
    )
    parser.add_argument(
        "--http",
        type=http_address,
        default=DEFAULT_HTTP,
        metavar="HOST:PORT",
        help=f"where to serve /healthz and /metrics (default {DEFAULT_HTTP}; "
        "port 0: any free port, logged; 'off': none)",
    )
    args = parser.parse_args(argv)
    configure_json_logging(os.environ.get("POSTTRAIN_LOG_LEVEL", "INFO"))
    asyncio.run(serve(args))
    return 0
