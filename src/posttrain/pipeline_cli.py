"""``posttrain pipeline submit | status | resume | cancel | retry``: the older forms, kept as
they were (``posttrain submit | status | resume | cancel | retry`` are the new ones, in
``posttrain.cli``); ``load_pipeline_file`` serves both."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from posttrain.orchestrator.core.document import PipelineDocument


def load_pipeline_file(path: str, *, say: Callable[[str], None] | None = None) -> PipelineDocument:
    """A pipeline file: YAML or JSON with ``stages`` (and ``name``, ``settings``,
    ``pipeline_id``), or just a list of stages.

    A relative path in a stage's params that names an existing file or directory next to the
    pipeline file is made absolute, so that an agent started anywhere finds it; ``say`` is told
    each change."""
    from posttrain.orchestrator.core.document import DocumentError, read_document

    try:
        doc = read_document(Path(path).read_bytes(), "application/yaml")  # JSON is YAML too
    except DocumentError as exc:
        raise SystemExit(f"{path}: {exc}") from None
    base = Path(path).resolve().parent
    stages = []
    for stage in doc.stages:
        if isinstance(stage, dict) and isinstance(stage.get("params"), dict):
            where = f"stage {stage.get('name')!r} params"
            stage = {**stage, "params": _absolute(stage["params"], base, where, say)}
        stages.append(stage)
    return replace(doc, stages=stages)


def _absolute(value: Any, base: Path, where: str, say: Callable[[str], None] | None) -> Any:
    if isinstance(value, dict):
        return {k: _absolute(v, base, f"{where}.{k}", say) for k, v in value.items()}
    if isinstance(value, list):
        return [_absolute(v, base, f"{where}[{i}]", say) for i, v in enumerate(value)]
    if (
        isinstance(value, str)
        and value
        and "${" not in value
        and "://" not in value
        and not Path(value).is_absolute()
        and (base / value).exists()
    ):
        absolute = str((base / value).resolve())
        if say is not None:
            say(f"{where}: {value} -> {absolute}")
        return absolute
    return value


def _print_status(status: dict[str, Any], *, verbose: bool = False) -> None:
    print(f"pipeline {status['pipeline_uuid']} ({status['name']}): {status['status']}")
    for error in status["errors"]:
        print(
            f"  error: stage {error.get('stage')!r} field {error.get('field')!r}: "
            f"{error.get('message')}"
        )
    for stage in status["stages"]:
        extra = stage["waiting_reason"] or stage["error"] or ""
        print(
            f"  {stage['name']:<16} {stage['status']:<10} attempt {stage['attempt']:<2} "
            f"{stage['task_id'] or '-':<40} {stage['agent_id'] or '-':<12} {_one_line(extra)}"
        )
        if verbose and "\n" in extra.strip():
            print("\n".join(f"      {line}" for line in extra.strip().splitlines()))


def _one_line(text: str) -> str:
    """An error as one line (``posttrain.render.one_line``: the one rule for the old and the new
    commands)."""
    from posttrain.render import one_line

    return one_line(text)


def main(argv: Sequence[str]) -> int:
    from posttrain.orchestrator.client import PipelineExecutor, get_pipeline_status
    from posttrain.orchestrator.core.dag import InvalidPipeline

    parser = argparse.ArgumentParser(prog="posttrain pipeline")
    sub = parser.add_subparsers(dest="action", required=True)
    submit = sub.add_parser("submit", help="validate and submit a pipeline file (YAML/JSON)")
    submit.add_argument("file")
    submit.add_argument("--id", default=None, help="pipeline id (default: a new uuid)")
    status = sub.add_parser("status", help="a pipeline's status, per stage")
    status.add_argument("pipeline_id")
    status.add_argument("--json", action="store_true")
    status.add_argument("--verbose", action="store_true", help="errors in full")
    for name in ("resume", "cancel"):
        sub.add_parser(name).add_argument("pipeline_id")
    retry = sub.add_parser("retry", help="run one failed stage again")
    retry.add_argument("pipeline_id")
    retry.add_argument("stage")
    args = parser.parse_args(argv)

    if args.action == "submit":
        doc = load_pipeline_file(
            args.file, say=lambda change: print(f"made absolute: {change}", file=sys.stderr)
        )
        try:
            result = PipelineExecutor(args.id or doc.pipeline_id, submitted_by="cli").execute(
                doc.stages, name=doc.name, settings=doc.settings
            )
        except InvalidPipeline as exc:
            print(exc, file=sys.stderr)
            return 2
        print(f"submitted {result['pipeline_uuid']}")
        for i, layer in enumerate(result["layers"]):
            print(f"  layer {i}: {', '.join(layer)}")
        return 0
    if args.action == "status":
        found = get_pipeline_status(args.pipeline_id)
        if found is None:
            print(f"no pipeline {args.pipeline_id} (yet)", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(found, default=str, indent=2))
        else:
            _print_status(found, verbose=args.verbose)
        return 0
    from posttrain.orchestrator.client import UnknownPipeline

    executor = PipelineExecutor(args.pipeline_id, submitted_by="cli")
    try:
        if args.action == "resume":
            executor.resume()
        elif args.action == "cancel":
            executor.cancel("cancelled from the command line")
        else:
            executor.retry_stage(args.stage)
    except UnknownPipeline as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.action} sent for {args.pipeline_id}")
    return 0
