"""``posttrain pipeline submit | status | resume | cancel | retry``: the older forms, kept as
they were (``posttrain submit | status | resume | cancel | retry`` are the new ones, in
``posttrain.cli``); ``load_pipeline_file`` serves both."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from posttrain.service.commands import command_app, run_app

if TYPE_CHECKING:
    from posttrain.orchestrator.client import PipelineDocument


def load_pipeline_file(path: str, *, say: Callable[[str], None] | None = None) -> PipelineDocument:
    """A pipeline file: YAML or JSON with ``stages`` (and ``name``, ``settings``,
    ``pipeline_id``), or just a list of stages.

    A relative path in a stage's params that names an existing file or directory next to the
    pipeline file is made absolute, so that an agent started anywhere finds it; ``say`` is told
    each change."""
    from posttrain.orchestrator.client import DocumentError, read_document

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


app = command_app("The older forms: pipeline submit | status | resume | cancel | retry.")


@app.command("submit")
def submit_command(
    file: Annotated[str, typer.Argument()],
    id: Annotated[str | None, typer.Option(help="pipeline id (default: a new uuid)")] = None,
) -> None:
    """Validate and submit a pipeline file (YAML/JSON)."""
    from posttrain.orchestrator.client import InvalidPipeline, PipelineExecutor

    doc = load_pipeline_file(
        file, say=lambda change: print(f"made absolute: {change}", file=sys.stderr)
    )
    try:
        result = PipelineExecutor(id or doc.pipeline_id, submitted_by="cli").execute(
            doc.stages, name=doc.name, settings=doc.settings
        )
    except InvalidPipeline as exc:
        print(exc, file=sys.stderr)
        raise typer.Exit(2) from None
    print(f"submitted {result['pipeline_uuid']}")
    for i, layer in enumerate(result["layers"]):
        print(f"  layer {i}: {', '.join(layer)}")


@app.command("status")
def status_command(
    pipeline_id: Annotated[str, typer.Argument()],
    json_out: Annotated[bool, typer.Option("--json")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="errors in full")] = False,
) -> None:
    """A pipeline's status, per stage."""
    from posttrain.orchestrator.client import get_pipeline_status

    found = get_pipeline_status(pipeline_id)
    if found is None:
        print(f"no pipeline {pipeline_id} (yet)", file=sys.stderr)
        raise typer.Exit(1)
    if json_out:
        print(json.dumps(found, default=str, indent=2))
    else:
        _print_status(found, verbose=verbose)


@app.command("resume")
def resume_command(pipeline_id: Annotated[str, typer.Argument()]) -> None:
    _steer("resume", pipeline_id, lambda executor: executor.resume())


@app.command("cancel")
def cancel_command(pipeline_id: Annotated[str, typer.Argument()]) -> None:
    _steer("cancel", pipeline_id, lambda e: e.cancel("cancelled from the command line"))


@app.command("retry")
def retry_command(
    pipeline_id: Annotated[str, typer.Argument()], stage: Annotated[str, typer.Argument()]
) -> None:
    """Run one failed stage again."""
    _steer("retry", pipeline_id, lambda executor: executor.retry_stage(stage))


def _steer(action: str, pipeline_id: str, send: Callable[[Any], object]) -> None:
    from posttrain.orchestrator.client import PipelineExecutor, UnknownPipeline

    try:
        send(PipelineExecutor(pipeline_id, submitted_by="cli"))
    except UnknownPipeline as exc:
        print(exc, file=sys.stderr)
        raise typer.Exit(1) from None
    print(f"{action} sent for {pipeline_id}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, "posttrain pipeline")
