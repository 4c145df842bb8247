"""The ``posttrain`` command line as a user runs it (a process), on the real stack: tokens,
submit --follow, status (and when it is stale), and errors as one sentence."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import asyncpg
import pytest

from posttrain.gateway.auth import authenticate, token_hash
from posttrain.orchestrator.client import aget_pipeline_status
from posttrain.orchestrator.shell.service import expected_partitions
from posttrain.testing.scripted_agent import ScriptedAgent
from posttrain.testing.services import kafka_env
from tests.integration.orchestrator.test_orchestrator import running
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

POSTTRAIN = str(Path(sys.executable).with_name("posttrain"))


async def posttrain(*args: str, env: dict[str, str], timeout: float = 120) -> tuple[int, str, str]:
    """Run ``posttrain ARGS``; (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        POSTTRAIN,
        *args,
        env={**env, "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def one_sentence(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err and err.startswith("posttrain: ")


async def test_tokens_are_made_listed_and_revoked_and_only_their_hash_is_kept(
    kafka_settings, database_url, run_id
):
    env = kafka_env(kafka_settings, database_url)
    name = f"{run_id}-alice"
    code, out, err = await posttrain(
        "token", "create", "--name", name, "--role", "submitter", env=env
    )
    assert code == 0, err
    token = out.strip()
    assert len(token) >= 40 and "\n" not in token
    assert "shown once" in err

    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchrow("SELECT * FROM gateway_tokens WHERE name = $1", name)
        assert bytes(stored["token_hash"]) == token_hash(token)
        assert token not in str(dict(stored))
        principal = await authenticate(conn, f"Bearer {token}")
        assert (principal.name, principal.role.name) == (name, "SUBMITTER")

        code, out, _ = await posttrain("token", "list", env=env)
        assert code == 0
        (row,) = [line for line in out.splitlines() if line.startswith(name)]
        assert row.split()[1] == "submitter" and token not in out

        again = await posttrain("token", "create", "--name", name, "--role", "admin", env=env)
        assert again[0] == 1 and one_sentence(again[2]) and "exists already" in again[2]
        bad_role = await posttrain("token", "create", "--name", "x", "--role", "operator", env=env)
        assert bad_role[0] == 1 and "viewer, submitter, admin" in bad_role[2]

        code, out, err = await posttrain("token", "revoke", name, env=env)
        assert code == 0, err
        assert await authenticate(conn, f"Bearer {token}") is None
        code, out, _ = await posttrain("token", "list", env=env)
        (row,) = [line for line in out.splitlines() if line.startswith(name)]
        assert len(row.split()) == 2 + 2 + 2  # name, role, created (2 words), revoked (2)

        unknown = await posttrain("token", "revoke", f"{run_id}-nobody", env=env)
        assert unknown[0] == 1 and one_sentence(unknown[2]) and "token list" in unknown[2]
    finally:
        await conn.close()


async def test_errors_are_one_sentence_saying_what_to_do(kafka_settings, database_url, tmp_path):
    env = kafka_env(kafka_settings, database_url)
    nowhere = {**env, "DATABASE_URL": "postgresql://posttrain:secret@127.0.0.1:1/posttrain"}
    code, _, err = await posttrain("status", "anything", env=nowhere)
    assert code == 1 and one_sentence(err), err
    assert "posttrain stack up" in err and "secret" not in err

    code, _, err = await posttrain("status", "no-such-pipeline", env=env)
    assert code == 1 and one_sentence(err) and "posttrain list" in err

    code, _, err = await posttrain("resume", "no-such-pipeline", env=env)
    assert code == 1 and one_sentence(err) and "never submitted" in err

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "stages:\n  - {name: a, task: command, params: {argv: []}}\n"
        "  - {name: b, task: teleport, depends_on: [a]}\n"
    )
    code, _, err = await posttrain("submit", str(bad), env=env)
    assert code == 1 and one_sentence(err), err
    assert "stage 'a' field 'params.argv'" in err and "stage 'b' field 'task'" in err

    code, _, err = await posttrain("submit", str(tmp_path / "missing.yaml"), env=env)
    assert code == 1 and one_sentence(err) and "missing.yaml" in err

    no_broker = {**env, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    good = tmp_path / "good.yaml"
    good.write_text("stages:\n  - {name: a, task: command, params: {argv: ['true']}}\n")
    code, _, err = await posttrain("submit", str(good), env=no_broker, timeout=180)
    assert code == 1 and one_sentence(err), err
    assert "broker" in err and "KAFKA_BOOTSTRAP_SERVERS" in err


async def test_submit_follow_shows_the_run_and_exits_by_its_outcome(
    kafka_settings, database_url, tmp_path, run_id
):
    env = kafka_env(kafka_settings, database_url)
    (tmp_path / "data.txt").write_text("x\n")
    good = tmp_path / "good.yaml"
    good.write_text(
        f"pipeline_id: {run_id}-good\n"
        "stages:\n"
        "  - {name: a, task: command, params: {argv: [cat, data.txt]}}\n"
        "  - {name: b, task: command, params: {argv: ['true']}, depends_on: [a]}\n"
        "  - {name: c, task: command, params: {argv: ['true']}, depends_on: [a]}\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"pipeline_id: {run_id}-bad\n"
        "stages:\n"
        "  - {name: a, task: command, params: {argv: ['true']}}\n"
        "  - {name: boom, task: command, params: {argv: ['false']}, depends_on: [a]}\n"
    )
    agent = ScriptedAgent(kafka_settings, "gpu-1", tmp_path / "record.jsonl", fail={"boom": [1]})
    async with running(kafka_settings, database_url, agent) as orchestrator:
        everything = list(range(expected_partitions()))
        await wait_for(
            lambda: orchestrator.partitions == everything and not orchestrator.stats.replaying,
            timeout=90,
            what="the orchestrator to own every partition",
        )
        code, out, err = await posttrain("submit", str(good), "--follow", env=env)
        assert code == 0, out + err
        assert f"made absolute: stage 'a' params.argv[1]: data.txt -> {tmp_path}/data.txt" in err
        assert f"submitted {run_id}-good" in out
        assert "layer 0: a" in out and "layer 1: b, c" in out
        for stage in "abc":
            assert f"{stage}: succeeded (attempt 1, on gpu-1)" in out
        # The live view's last frame: the pipeline, then a line per stage, ending its line.
        assert out.endswith("\n")
        final = out.rstrip().splitlines()[-5:]
        assert final[0] == f"pipeline {run_id}-good ({run_id}-good): succeeded", out
        assert final[2].split()[4] == f"{run_id}-good:a:1"
        assert [line.split()[:3] for line in final[2:]] == [
            ["0", "a", "succeeded"],
            ["1", "b", "succeeded"],
            ["1", "c", "succeeded"],
        ]
        assert "pipeline: succeeded" in out
        assert "rdkafka" not in out + err  # no client library's noise in what a user reads
        status = await aget_pipeline_status(f"{run_id}-good", database_url)
        assert status["submitted_by"].startswith("cli")

        code, out, err = await posttrain("submit", str(bad), "--follow", env=env)
        assert code == 1, out + err
        assert "boom: failed (attempt 1, on gpu-1)" in out and "pipeline: failed" in out

        code, out, err = await posttrain("status", f"{run_id}-bad", env=env)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == f"pipeline {run_id}-bad ({run_id}-bad): failed"
        (boom,) = [line for line in lines if " boom " in line]
        assert boom.split()[:4] == ["1", "boom", "failed", "1"]
        assert "stale" not in out

        # Its history: what was decided and what happened, one line each, in order.
        code, out, err = await posttrain("history", f"{run_id}-bad", env=env)
        assert code == 0, err
        for event in ("PipelineSubmitted", "StageDispatched", "StageSucceeded", "StageFailed"):
            assert event in out, out
        assert out.index("PipelineSubmitted") < out.index("StageFailed")
        # The agents, with what they run and when they were heard from.
        code, out, err = await posttrain("agents", env=env)
        assert code == 0, err
        assert "gpu-1" in out, out

        # The older form still answers, as it did.
        code, out, err = await posttrain("pipeline", "status", f"{run_id}-bad", env=env)
        assert code == 0, err
        assert out.splitlines()[0] == f"pipeline {run_id}-bad ({run_id}-bad): failed"


async def test_status_says_when_no_orchestrator_is_alive(
    kafka_settings, database_url, tmp_path, run_id
):
    env = kafka_env(kafka_settings, database_url)
    hold = asyncio.Event()  # the stage runs until the test ends
    agent = ScriptedAgent(kafka_settings, "gpu-1", tmp_path / "record.jsonl", holds={"a": hold})
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"pipeline_id: {run_id}\nstages:\n  - {{name: a, task: command, params: {{argv: [x]}}}}\n"
    )
    try:
        async with running(kafka_settings, database_url, agent) as orchestrator:
            everything = list(range(expected_partitions()))
            await wait_for(
                lambda: orchestrator.partitions == everything and not orchestrator.stats.replaying,
                timeout=90,
                what="the orchestrator to own every partition",
            )
            assert (await posttrain("submit", str(pipeline), env=env))[0] == 0

            async def shown_running():
                code, out, _ = await posttrain("status", run_id, env=env)
                return out if code == 0 and " a " in out and "running" in out else None

            out = await wait_for(shown_running, timeout=60, what="the stage to run")
            assert "stale" not in out, out
        # The orchestrator has stopped (and left its group); the read model still says running.
        code, out, err = await posttrain("status", run_id, env=env)
        assert code == 0, err
        first = out.splitlines()[0]
        assert first.startswith(f"pipeline {run_id} (") and ": running" in first
        assert "[stale: no live orchestrator (start one with `posttrain orchestrator`)]" in first
    finally:
        hold.set()


async def test_metrics_and_diagnose_read_a_jobs_stored_points(
    kafka_settings, database_url, run_id, tmp_path
):
    env = kafka_env(kafka_settings, database_url)
    job = f"{run_id}-job"
    lines = []
    for step in range(1, 61):
        loss = 2.0 / step if step != 40 else "NaN"  # a NaN loss at step 40
        lines.append(
            json.dumps(
                {"job_id": job, "step": step, "timestamp": 1767225600.0 + step, "loss": loss}
            )
        )
    path = tmp_path / f"{job}_metrics.jsonl"
    path.write_text("\n".join(lines) + "\n")
    code, out, err = await posttrain("metrics", "sync", str(path), env=env)  # the service's form
    assert code == 0 and "60 new" in out, out + err

    code, out, err = await posttrain("metrics", job, "--limit", "5", env=env)
    assert code == 0, err
    rows = out.splitlines()
    assert rows[0].split() == ["step", "loss"]
    assert [r.split()[0] for r in rows[1:]] == ["56", "57", "58", "59", "60"]
    assert rows[-1].split()[1] == "0.03333"

    code, out, err = await posttrain("metrics", job, "--limit", "60", "--chart", env=env)
    assert code == 0, err
    (loss,) = [line for line in out.splitlines() if line.startswith("loss")]
    assert loss.split()[1:4] == ["0.03333", "2", "0.03333"]  # min, max, last
    assert "steps 1..60" in out

    code, out, err = await posttrain("diagnose", job, env=env)
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"job {job}: ")
    assert "step 40" in out and "nan" in out.lower()

    code, _, err = await posttrain("metrics", f"{run_id}-nothing", env=env)
    assert code == 1 and one_sentence(err) and "no metrics stored" in err
