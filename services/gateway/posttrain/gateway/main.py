"""``posttrain gateway`` / ``posttrain-gateway``: serve the HTTP API with uvicorn.

Tokens come from ``POSTTRAIN_API_TOKENS`` (``TOKEN:ROLE,...``, roles ``viewer`` and
``operator``); without any, the gateway refuses to start unless ``--no-auth`` says so.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from posttrain.orchestrator.api import DEFAULT_DATABASE_URL

DEFAULT_PORT = 9460


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="posttrain gateway", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="serve without tokens: every caller is an operator (a local, single-user setup)",
    )
    args = parser.parse_args(argv)

    import uvicorn

    from posttrain.events.kafka import KafkaSettings
    from posttrain.gateway.app import GatewayConfig, create_app
    from posttrain.gateway.auth import parse_tokens
    from posttrain.service.logs import configure_json_logging

    try:
        tokens = parse_tokens(os.environ.get("POSTTRAIN_API_TOKENS", ""))
    except ValueError as exc:
        print(f"posttrain gateway: POSTTRAIN_API_TOKENS: {exc}", file=sys.stderr)
        return 2
    if not tokens and not args.no_auth:
        print(
            "posttrain gateway: no tokens in POSTTRAIN_API_TOKENS (TOKEN:ROLE,...); "
            "pass --no-auth to serve without them",
            file=sys.stderr,
        )
        return 2
    configure_json_logging(os.environ.get("POSTTRAIN_LOG_LEVEL", "INFO"))
    app = create_app(
        GatewayConfig(
            kafka=KafkaSettings.from_env(client_id="gateway"),
            database_url=args.database_url,
            tokens=None if args.no_auth else tokens,
        )
    )
    uvicorn.run(app, host=args.host, port=args.port, log_config=None)
    return 0
