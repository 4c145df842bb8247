"""``python -m posttrain.metrics_ingest`` (also the ``posttrain-ingest`` command): run the
service until SIGTERM or SIGINT, then write and commit what was read, and exit."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from posttrain.events.kafka import KafkaSettings
from posttrain.metrics_ingest.core.batching import PRESETS
from posttrain.metrics_ingest.endpoints import routes
from posttrain.metrics_ingest.service import ConsumerOptions, IngestService
from posttrain.metrics_ingest.settings import IngestConfig, load_config
from posttrain.service.collector import quiet_collector
from posttrain.service.commands import command_app, run_app
from posttrain.service.http import EndpointServer
from posttrain.service.logs import configure_json_logging

log = logging.getLogger("posttrain.metrics_ingest")


async def serve(config: IngestConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The endpoints listen first: their address goes into the consumer's client id, where
    # ``flush_metrics()`` in another process finds it. The routes are added once the service
    # exists (until then a request is a 404).
    endpoints = None
    address = None
    if config.http_host is not None:
        endpoints = EndpointServer({}, config.http_host, config.http_port)
        port = await endpoints.start()
        address = f"{config.http_host}:{port}"
    settings = KafkaSettings.from_env(client_id="posttrain-ingest")
    service = IngestService(
        settings,
        config.database_url,
        policy=config.policy,
        consumer=ConsumerOptions(
            group_instance_id=config.instance_id,
            session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=max(500, config.session_timeout_ms // 5),
        ),
        migrate=config.migrate,
        http_address=address,
    )
    policy = config.policy
    identity: dict[str, object] = {
        "namespace": settings.namespace,
        "kafka": settings.bootstrap_servers,
        "instance_id": config.instance_id,
        "http": address,
    }
    try:
        if endpoints is not None:
            endpoints.routes.update(routes(service))
        log.info(
            "ingest started",
            extra={
                **identity,
                "client_id": service.client_id,
                "group": service.group,
                "batch_rows": policy.max_rows,
                "batch_age_s": policy.max_age_s,
                "max_pending_rows": policy.max_pending_rows,
            },
        )
        await service.run(stop)
    finally:
        if endpoints is not None:
            await endpoints.stop()
        log.info("ingest stopped", extra={**identity, "rows_inserted": service.stats.rows_inserted})


app = command_app()


@app.command(help="Consume posttrain.metrics into PostgreSQL (every point exactly once).")
def run(
    preset: Annotated[
        str | None, typer.Option(help=f"batch policy preset: {', '.join(sorted(PRESETS))}")
    ] = None,
    batch_rows: Annotated[int | None, typer.Option(help="close a batch at this many rows")] = None,
    batch_age: Annotated[
        float | None, typer.Option(help="close a batch this many seconds old")
    ] = None,
    max_pending_rows: Annotated[
        int | None, typer.Option(help="pause consumption above this many rows in memory")
    ] = None,
    http: Annotated[
        str | None, typer.Option(help="host:port of /healthz, /metrics, /flush; 'off' for none")
    ] = None,
    instance_id: Annotated[
        str | None, typer.Option(help="static group membership id (stable per replica)")
    ] = None,
    session_timeout_ms: Annotated[int | None, typer.Option()] = None,
    no_migrate: Annotated[
        bool, typer.Option("--no-migrate", help="do not apply migrations")
    ] = False,
    log_level: Annotated[str, typer.Option()] = "INFO",
) -> None:
    try:
        config = load_config(
            migrate=not no_migrate,
            log_level=log_level,
            preset=preset,
            batch_rows=batch_rows,
            batch_age_s=batch_age,
            max_pending_rows=max_pending_rows,
            http=http,
            instance_id=instance_id,
            session_timeout_ms=session_timeout_ms,
        )
    except ValueError as exc:  # pydantic's ValidationError is one: it names the variable
        raise typer.BadParameter(str(exc)) from None
    _run(config)


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, "posttrain-ingest")


def _run(config: IngestConfig) -> None:
    configure_json_logging(config.log_level)
    # Every point makes a few short-lived tuples: with the default threshold (700) the cyclic
    # collector runs hundreds of times a second, rescanning the pending rows each time. Rows
    # hold no cycles, so collect rarely; and leave everything imported so far out of it.
    quiet_collector((50_000, 50, 100), freeze=True)
    asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
