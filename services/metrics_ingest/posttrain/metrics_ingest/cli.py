"""``posttrain metrics ...``: ``main(argv)`` takes the arguments after ``metrics``.

posttrain metrics sync FILE [--job JOB]    store a JSONL metric file's points (idempotent)
posttrain metrics flush [--url URL]        make the running ingest service write now
posttrain metrics latest JOB [--limit N]   print a job's latest points as JSON lines
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import orjson

from posttrain.events.metricfile import FILE_SUFFIX, job_from_file_name

DEFAULT_FLUSH_URL = "http://127.0.0.1:9464/flush"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="posttrain metrics",
        description="Training metrics: sync JSONL files, flush the ingest service, read points.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sync = sub.add_parser("sync", help="store the points of a JSONL metric file (idempotent)")
    sync.add_argument("file")
    sync.add_argument("--job", help=f"the job (default: the file name before {FILE_SUFFIX})")
    flush = sub.add_parser("flush", help="ask the running ingest service to write now")
    flush.add_argument("--url", default=DEFAULT_FLUSH_URL)
    latest = sub.add_parser("latest", help="a job's latest points, one JSON object a line")
    latest.add_argument("job")
    latest.add_argument("--limit", type=int, default=10)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.action == "sync":
        return _sync(args.file, args.job)
    if args.action == "flush":
        return _flush(args.url)
    return asyncio.run(_latest(args.job, args.limit))


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
