"""The same JSONL file synced twice yields each point once; lines appended later are added."""

from __future__ import annotations

import asyncpg
import orjson
import pytest

from posttrain.metrics_ingest import get_metrics_range, sync_metrics_from_file
from posttrain.metrics_ingest.cli import main as metrics_cli
from posttrain.trainer_agent.metrics_file import create_metrics_file_writer
from tests.integration.metrics_ingest.helpers import count, point, stored

pytestmark = pytest.mark.integration


def _line(job: str, step: int) -> bytes:
    # The file writer's format: the point's fields, non-null only, next to job_id.
    body = point(step, 1.78e9).model_dump_json(exclude_none=True).encode()
    return b'{"job_id":' + orjson.dumps(job) + b"," + body[1:] + b"\n"


async def test_syncing_the_same_file_twice_stores_each_point_once(database_url, run_id, tmp_path):
    job = f"{run_id}-file"
    # Written by the trainer's own file writer (SEED.md mode B), trainer names and all.
    with create_metrics_file_writer(job, tmp_path) as write:
        for s in range(5_000):
            write(step=s, epoch=s / 1000, loss=1.0 / (1 + s), grad_norm_actor=2.0, my_metric=s)
    path = tmp_path / f"{job}_metrics.jsonl"
    with path.open("ab") as fh:
        fh.write(b"garbage line\n")

    first = await sync_metrics_from_file(job, path)
    second = await sync_metrics_from_file(job, path)
    assert (first.points, first.inserted, first.errors[0][0]) == (5_000, 5_000, 5_001)
    assert (second.points, second.inserted) == (5_000, 0)

    conn = await asyncpg.connect(database_url)
    try:
        held = await stored(conn, [job])
        assert sorted(seq for _, _, seq in held) == list(range(5_000))
        assert all(step == seq for (_, _, seq), (step, _) in held.items())
        series = await get_metrics_range(job, ["loss", "grad_norm", "custom.my_metric"], db=conn)
        assert series.steps == list(range(5_000))
        assert series.values["loss"] == [1.0 / (1 + s) for s in range(5_000)]
        assert set(series.values["grad_norm"]) == {2.0}
        assert series.values["custom.my_metric"] == list(range(5_000))

        # Lines appended later: a third sync adds just those.
        with path.open("ab") as fh:
            fh.write(b"".join(_line(job, s) for s in range(5_000, 5_100)))
        third = await sync_metrics_from_file(job, path)
        assert third.inserted == 100
        assert await count(conn, [job]) == 5_100
    finally:
        await conn.close()


@pytest.fixture(autouse=True)
def _database_url_env(database_url, monkeypatch):
    # Without ``db``, a sync (and the CLI) connects to DATABASE_URL: this run's database.
    monkeypatch.setenv("DATABASE_URL", database_url)


def test_the_cli_syncs_a_file_named_after_its_job(database_url, run_id, tmp_path, capsys):
    job = f"{run_id}-cli"
    path = tmp_path / f"{job}_metrics.jsonl"
    path.write_bytes(b"".join(_line(job, s) for s in range(300)))
    assert metrics_cli(["sync", str(path)]) == 0
    assert "300 new, 0 already stored" in capsys.readouterr().out
    assert metrics_cli(["sync", str(path)]) == 0
    assert "0 new, 300 already stored" in capsys.readouterr().out
    assert metrics_cli(["sync", str(tmp_path / "unnamed.jsonl")]) == 2
