"""Process entry: run the orchestrator until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Sequence

from posttrain.events.kafka import KafkaSettings
from posttrain.orchestrator.shell.service import Orchestrator


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
    )
    await orchestrator.start()
    tasks = [asyncio.create_task(orchestrator.run(stop), name="orchestrator")]
    if args.projection:
        from posttrain.orchestrator.shell.projection import Projection

        projection = Projection(settings, args.database_url)
        await projection.start()
        tasks.append(asyncio.create_task(projection.run(stop), name="projection"))
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        stop.set()
        await orchestrator.stop()


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
        "--no-projection",
        dest="projection",
        action="store_false",
        help="do not project pipelines into PostgreSQL",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "DATABASE_URL", "postgresql://posttrain:posttrain@127.0.0.1:5432/posttrain"
        ),
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("POSTTRAIN_LOG_LEVEL", "INFO"),
        format='{"t":"%(asctime)s","level":"%(levelname)s",'
        '"logger":"%(name)s","msg":"%(message)s"}',
    )
    asyncio.run(serve(args))
    return 0
