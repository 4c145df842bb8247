"""Prepare a cluster for posttrain: create every declared topic and apply every owner's migrations.

    python deploy/prepare.py [--no-topics] [--no-migrations]

The one-shot step before the services start, for a cluster that ``posttrain stack up`` does not
manage (the compose file's ``prepare`` service, the Kubernetes ``posttrain-prepare`` Job). It reads
``KAFKA_BOOTSTRAP_SERVERS``, ``POSTTRAIN_TOPIC_NAMESPACE`` and ``DATABASE_URL`` like the services,
creates the topics of ``posttrain.events.topics`` with their partitions and configs (those that
exist are left as they are), and applies the migrations every installed owner declares. On
Kubernetes Strimzi's ``KafkaTopic`` resources make the topics, so the Job passes ``--no-topics``.
Both steps are idempotent: running it again changes nothing.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from posttrain.events.kafka.admin import ensure_topics
from posttrain.events.kafka.settings import KafkaSettings
from posttrain.service.commands import command_app, run_app
from posttrain.service.migrate import apply_migrations
from posttrain.service.settings import database_url


async def prepare(*, topics: bool, migrations: bool) -> list[str]:
    """Create the missing topics and apply pending migrations; one line per thing done."""
    done: list[str] = []
    if topics:
        created = await ensure_topics(KafkaSettings.from_env(client_id="posttrain-prepare"))
        done.append(f"topics created: {', '.join(sorted(created)) or 'none (all present)'}")
    if migrations:
        applied = await apply_migrations(database_url())
        done.append(f"migrations applied: {', '.join(applied) or 'none (up to date)'}")
    return done


app = command_app(__doc__.splitlines()[0])


@app.command()
def _prepare(
    no_topics: Annotated[bool, typer.Option("--no-topics", help="do not create topics")] = False,
    no_migrations: Annotated[
        bool, typer.Option("--no-migrations", help="do not apply migrations")
    ] = False,
) -> None:
    """Create every declared topic and apply every owner's migrations (idempotent)."""
    for line in asyncio.run(prepare(topics=not no_topics, migrations=not no_migrations)):
        print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, "deploy/prepare.py")


if __name__ == "__main__":
    sys.exit(main())
