"""``posttrain diagnose ...``: ``main(argv)`` takes the arguments after ``diagnose``.

posttrain diagnose backtest (--job ID | --pipeline ID) [--policy FILE] [--json]
    what a detector configuration and action policy would have raised and done on stored metrics
posttrain diagnose anomalies (--job ID | --pipeline ID) [--json]
    the anomalies kept by the recorder, with the actions taken on each
posttrain diagnose record [--http HOST:PORT] [--no-migrate]
    run the recorder (posttrain-diagnostics-recorder)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

import orjson

DEFAULT_DATABASE_URL = "postgresql://posttrain:posttrain@127.0.0.1:5432/posttrain"


def _target(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--job", help="one training job")
    which.add_argument("--pipeline", help="every job of a pipeline")
    parser.add_argument(
        "--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="posttrain diagnose",
        description="Diagnostics: backtest a policy on stored metrics, read kept anomalies.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    backtest = sub.add_parser(
        "backtest",
        help="what a detector configuration and action policy would have raised and done",
    )
    _target(backtest)
    backtest.add_argument(
        "--policy",
        help="a diagnostics configuration (JSON or YAML, as POSTTRAIN_DIAGNOSTICS_CONFIG); "
        "default: $POSTTRAIN_DIAGNOSTICS_CONFIG, else the defaults",
    )
    anomalies = sub.add_parser("anomalies", help="kept anomalies with the actions taken on each")
    _target(anomalies)
    sub.add_parser("record", help="run the recorder", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "record":  # the recorder parses its own options
        from posttrain.diagnostics.recorder import main as recorder_main

        return recorder_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.action == "backtest":
        return _backtest(args)
    return _anomalies(args)


def _backtest(args: argparse.Namespace) -> int:
    from posttrain.diagnostics.alerts import load_config_book

    try:
        book = load_config_book(args.policy)
    except Exception as exc:  # a missing file, bad JSON/YAML, a key the schema refuses
        where = args.policy or os.environ.get("POSTTRAIN_DIAGNOSTICS_CONFIG")
        print(f"error: policy {where}: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run_backtest(args, book))


async def _run_backtest(args: argparse.Namespace, book: Any) -> int:
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


def _anomalies(args: argparse.Namespace) -> int:
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
