"""``posttrain gateway`` / ``posttrain-gateway``: serve the HTTP API with uvicorn.

Callers show a bearer token made by ``posttrain token create --name NAME --role
viewer|submitter|admin`` (kept hashed in the gateway's table, which it makes at start if
missing). Without any token made, the gateway refuses to start unless ``--no-auth`` says so
(every caller then acts as an admin).
``POSTTRAIN_API_TOKENS`` (plain-text tokens in the environment) is no longer read: a gateway that
finds it set refuses to start, so that nobody believes those tokens still open it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from posttrain.service import settings
from posttrain.service.commands import DatabaseUrlOption, command_app, run_app

DEFAULT_PORT = 9460


async def _live_tokens(database_url: str) -> int:
    """How many unrevoked tokens there are (the gateway's own tables made first, if missing)."""
    import asyncpg

    from posttrain.service.migrate import apply_migrations

    await apply_migrations(database_url, owner="gateway")
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM gateway_tokens WHERE revoked_at IS NULL")
        )
    finally:
        await conn.close()


app = command_app()


@app.command(help=__doc__)
def serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = DEFAULT_PORT,
    database_url: DatabaseUrlOption = None,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth",
            help="serve without tokens: every caller is an admin (a local, single-user setup)",
        ),
    ] = False,
) -> None:
    raise typer.Exit(_serve(host, port, settings.database_url(database_url), no_auth))


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, "posttrain gateway")


def _serve(host: str, port: int, database_url: str, no_auth: bool) -> int:
    if os.environ.get("POSTTRAIN_API_TOKENS"):
        print(
            "posttrain gateway: POSTTRAIN_API_TOKENS is no longer read (tokens are kept hashed): "
            "unset it and make tokens with `posttrain token create --name NAME --role ROLE`",
            file=sys.stderr,
        )
        return 2
    if not no_auth:
        import asyncpg

        try:
            live = asyncio.run(_live_tokens(database_url))
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            print(
                f"posttrain gateway: the database is unreachable ({exc}): start it with "
                "`posttrain stack up` or set DATABASE_URL",
                file=sys.stderr,
            )
            return 2
        if live == 0:
            print(
                "posttrain gateway: no tokens yet: make one with `posttrain token create --name "
                "NAME --role admin`, or pass --no-auth to serve without them",
                file=sys.stderr,
            )
            return 2

    import uvicorn

    from posttrain.events.kafka import KafkaSettings
    from posttrain.gateway.app import GatewayConfig, create_app
    from posttrain.service.logs import configure_json_logging

    configure_json_logging(settings.ServiceSettings().log_level)
    app = create_app(
        GatewayConfig(
            kafka=KafkaSettings.from_env(client_id="gateway"),
            database_url=database_url,
            auth=not no_auth,
            address=f"{host}:{port}",
        )
    )
    uvicorn.run(app, host=host, port=port, log_config=None)
    return 0
