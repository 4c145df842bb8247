"""The ``posttrain`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posttrain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="the local Kafka broker and PostgreSQL server")
    stack_sub = stack.add_subparsers(dest="action", required=True)
    stack_sub.add_parser("up", help="fetch, start and prepare Kafka and PostgreSQL (idempotent)")
    stack_sub.add_parser("down", help="stop what `stack up` started; data is kept")
    status = stack_sub.add_parser("status", help="what is running; exit 1 if not everything")
    status.add_argument("--quiet", action="store_true", help="print nothing, exit code only")

    sub.add_parser("doctor", help="check Java, the broker, topics, PostgreSQL and migrations")

    # Commands that belong to a service take the rest of the line as their own arguments.
    for name, help_text in _DELEGATED.items():
        delegated = sub.add_parser(name, help=help_text, add_help=False)
        delegated.add_argument("rest", nargs=argparse.REMAINDER)

    schema = sub.add_parser("schema", help="the message contracts")
    schema_sub = schema.add_subparsers(dest="action", required=True)
    export = schema_sub.add_parser("export", help="write one JSON Schema per message type")
    export.add_argument("dir")
    docs = schema_sub.add_parser("topics-doc", help="print docs/topics.md from the registry")
    docs.add_argument("--output", default="-")
    return parser


_DELEGATED = {
    "pipeline": "submit a pipeline file, show its status, resume, cancel, retry a stage",
    "orchestrator": "run the orchestrator service",
    "gateway": "serve the HTTP API (submissions, status, live updates, control)",
    "agent": "run a trainer agent on this node",
    "metrics": "metrics: sync a JSONL file into PostgreSQL, ...",
    "diagnose": "diagnostics: backtest a policy on stored metrics, kept anomalies, the recorder",
}


def _delegate(command: str, rest: list[str]) -> int:
    if command == "pipeline":
        from posttrain.pipeline_cli import main as pipeline_main

        return pipeline_main(rest)
    if command == "orchestrator":
        from posttrain.orchestrator.shell.main import main as orchestrator_main

        return orchestrator_main(rest)
    try:
        if command == "gateway":
            from posttrain.gateway.main import main as gateway_main

            return gateway_main(rest)
        if command == "agent":
            from posttrain.trainer_agent.cli import main as agent_main

            return int(agent_main(rest) or 0)
        if command == "diagnose":
            from posttrain.diagnostics.cli import main as diagnose_main

            return diagnose_main(rest)
        from posttrain.metrics_ingest.cli import main as metrics_main

        return int(metrics_main(rest) or 0)
    except ImportError as exc:
        print(f"posttrain {command}: not installed here ({exc})", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED:  # before argparse, which would eat their --help
        return _delegate(argv[0], argv[1:])
    args = _build_parser().parse_args(argv)
    if args.command == "stack":
        from posttrain.stack import commands

        if args.action == "up":
            return commands.up()
        if args.action == "down":
            return commands.down()
        return commands.status(quiet=args.quiet)
    if args.command == "doctor":
        from posttrain.doctor import run_doctor

        return run_doctor()
    if args.command == "schema":
        from posttrain.events import schema

        if args.action == "export":
            written = schema.export_json_schemas(args.dir)
            print(f"wrote {len(written)} schemas to {args.dir}")
            return 0
        text = schema.topics_markdown()
        if args.output == "-":
            sys.stdout.write(text)
        else:
            with open(args.output, "w", encoding="utf-8") as fh:
                fh.write(text)
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
