"""``posttrain metrics ...``: ``main(argv)`` takes the arguments after ``metrics``.

posttrain metrics sync FILE [--job JOB]    store a JSONL metric file's points (idempotent)
posttrain metrics flush [--url URL]        make the running ingest service write now
posttrain metrics latest JOB [--limit N]   print a job's latest points as JSON lines
"""

from __future__ import annotations

import asyncio
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import orjson
import typer

from posttrain.events.metricfile import FILE_SUFFIX, job_from_file_name
from posttrain.service.commands import command_app, run_app

DEFAULT_FLUSH_URL = "http://127.0.0.1:9464/flush"


app = command_app("Training metrics: sync JSONL files, flush the ingest service, read points.")


@app.command("sync")
def sync_command(
    file: Annotated[str, typer.Argument()],
    job: Annotated[
        str | None, typer.Option(help=f"the job (default: the file name before {FILE_SUFFIX})")
    ] = None,
) -> None:
    """Store the points of a JSONL metric file (idempotent)."""
    raise typer.Exit(_sync(file, job))


@app.command("flush")
def flush_command(url: Annotated[str, typer.Option()] = DEFAULT_FLUSH_URL) -> None:
    """Ask the running ingest service to write now."""
    raise typer.Exit(_flush(url))


@app.command("latest")
def latest_command(
    job: Annotated[str, typer.Argument()], limit: Annotated[int, typer.Option()] = 10
) -> None:
    """A job's latest points, one JSON object a line."""
    raise typer.Exit(asyncio.run(_latest(job, limit)))


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, "posttrain metrics")


def _sync(file: str, job: str | None) -> int:
    from posttrain.metrics_ingest.filesync import sync_metrics_from_file

    path = Path(file)
    job = job or job_from_file_name(path.name)
    if job is None:
        print(
            f"error: cannot tell the job from the file name {path.name!r} (expected "
            f"<job>{FILE_SUFFIX}); pass --job",
            file=sys.stderr,
        )
        return 2
    if not path.is_file():
        print(f"error: {file}: no such file", file=sys.stderr)
        return 2
    result = asyncio.run(sync_metrics_from_file(job, path))
    for line, why in result.errors[:20]:
        print(f"{file}:{line}: skipped: {why}", file=sys.stderr)
    if len(result.errors) > 20:
        print(f"... and {len(result.errors) - 20} more unreadable lines", file=sys.stderr)
    print(
        f"{file}: {result.points} points for job {job}: {result.inserted} new, "
        f"{result.duplicates} already stored ({result.source})"
    )
    return 1 if result.errors else 0


def _flush(url: str) -> int:
    request = urllib.request.Request(url, method="POST", data=b"")
    try:
        with urllib.request.urlopen(request, timeout=70) as response:
            print(response.read().decode())
    except (urllib.error.URLError, OSError) as exc:
        print(f"error: no ingest service answered at {url}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _latest(job: str, limit: int) -> int:
    from posttrain.metrics_ingest.queries import close_default_pool, get_latest_metrics

    try:
        for metric in await get_latest_metrics(job, limit):
            doc = {"source": metric.source, "seq": metric.seq}
            doc.update(orjson.loads(metric.point.model_dump_json(exclude_none=True)))
            sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    finally:
        await close_default_pool()
    return 0


if __name__ == "__main__":
    sys.exit(main())
