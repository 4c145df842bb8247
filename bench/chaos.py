"""The resilience and scale-out runs of issue 13 as a program: kills performed per service and
the invariant violations of each run, on this machine's stack.

- resilience: one instance of each service and two agents on a private broker and PostgreSQL
  (started for the run by the stack's own commands, removed after it), every service killed
  with SIGKILL at seeded moments, the broker and the database restarted once each;
- scale-out: two instances of each service and three agents on the local stack (a namespace
  and a database of the run's own), one instance of each service killed for good.

    python -m bench.chaos [--seed N] [--only resilience|scale-out]

The seed (POSTTRAIN_CHAOS_SEED, else drawn) is printed: the same seed makes the same plan.
Last line: ``violations: N`` (goal 0).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from bench.common import drop_database, drop_namespace, fresh_namespace, load
from posttrain.service.commands import command_app, run_app
from posttrain.service.settings import database_url
from posttrain.testing import databases
from posttrain.testing.chaos import Outcome, resilience, scale_out, seed_from_env
from posttrain.testing.platform import private_stack


def report(name: str, outcome: Outcome) -> None:
    print(f"{name}: {outcome.summary()}")
    for target, kills in sorted(outcome.kill_counts().items()):
        print(f"  {name} kills {target}: {kills}")


async def run(seed: int, only: str | None) -> int:
    violations = 0
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as scratch:
        root = Path(scratch)
        if only in (None, "resilience"):
            with private_stack() as stack:
                outcome, _ = await resilience(stack, root / "resilience", seed)
            report("resilience", outcome)
            violations += len(outcome.violations)
        if only in (None, "scale-out"):
            settings = await fresh_namespace("chaos")
            # Migrated, as the stack leaves its own database: the gateway reads its tables.
            database = await databases.create_database(database_url(), "bench_chaos", migrate=True)
            try:
                outcome, _ = await scale_out(settings, database, root / "scale-out", seed)
            finally:
                await drop_namespace(settings)
                await drop_database(database)
            report("scale-out", outcome)
            violations += len(outcome.violations)
    print(load())
    print(f"violations: {violations}")
    return 0 if violations == 0 else 1


class Part(StrEnum):
    RESILIENCE = "resilience"
    SCALE_OUT = "scale-out"


app = command_app()


@app.command()
def _bench(
    seed: Annotated[int | None, typer.Option(help="the plan's seed (default: from the env)")] = (
        None
    ),
    only: Annotated[Part | None, typer.Option(help="run one part alone")] = None,
) -> None:
    """The chaos plans (resilience, scale-out); exit 1 on any violated invariant."""
    chosen = seed if seed is not None else seed_from_env()
    if asyncio.run(run(chosen, None if only is None else only.value)):
        raise typer.Exit(1)


if __name__ == "__main__":
    sys.exit(run_app(app, None, "python -m bench.chaos"))
