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

    schema = sub.add_parser("schema", help="the message contracts")
    schema_sub = schema.add_subparsers(dest="action", required=True)
    export = schema_sub.add_parser("export", help="write one JSON Schema per message type")
    export.add_argument("dir")
    docs = schema_sub.add_parser("topics-doc", help="print docs/topics.md from the registry")
    docs.add_argument("--output", default="-")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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
