"""The orchestrator on the real broker and database, with a scripted agent standing in for GPU
nodes: pipelines run to the end, resume after failure, and survive kill -9 at any moment."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter

import pytest

from posttrain.orchestrator.client import PipelineExecutor, aget_pipeline_status
from posttrain.orchestrator.shell.projection import Projection
from posttrain.orchestrator.shell.service import Orchestrator
from posttrain.testing.orchestrator import read_log, start_orchestrator
from posttrain.testing.scripted_agent import ScriptedAgent, read_record
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def cmd(name, deps=(), **extra):
    return {
        "name": name,
        "task": "command",
        "params": {"argv": ["train", name]},
        "depends_on": list(deps),
        **extra,
    }


@contextlib.asynccontextmanager
async def running(kafka_settings, database_url, agent):
    stop_event = asyncio.Event()
    orchestrator = Orchestrator(kafka_settings, tick_interval_s=0.2, session_timeout_ms=2000)
    projection = Projection(kafka_settings, database_url)
    await orchestrator.start()
    await projection.start()
    await agent.start()
    tasks = [
        asyncio.create_task(orchestrator.run(stop_event)),
        asyncio.create_task(projection.run(stop_event)),
    ]
    try:
        yield orchestrator
    finally:
        stop_event.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await agent.stop()
        await orchestrator.stop()


async def _status(pipeline_id, database_url, wanted):
    async def check():
        status = await aget_pipeline_status(pipeline_id, database_url)
        return status if status and status["status"] in wanted else None

    return await wait_for(check, timeout=60, what=f"pipeline {pipeline_id} {wanted}")


async def test_fan_out_pipeline_runs_and_status_is_queryable(
    kafka_settings, database_url, tmp_path, run_id
):
    agent = ScriptedAgent(kafka_settings, "gpu-1", tmp_path / "record.jsonl")
    async with running(kafka_settings, database_url, agent):
        submitted = await PipelineExecutor(run_id, settings=kafka_settings).aexecute(
            [
                cmd("preprocess"),
                cmd("sft", ["preprocess"]),
                cmd("rl_1", ["sft"]),
                cmd("rl_2", ["sft"]),
                cmd("evaluate", ["rl_1", "rl_2"]),
            ],
            name="seed-shape",
        )
        assert submitted["layers"] == [["preprocess"], ["sft"], ["rl_1", "rl_2"], ["evaluate"]]
        status = await _status(run_id, database_url, {"succeeded", "failed"})
    assert status["status"] == "succeeded"
    by_name = {s["name"]: s for s in status["stages"]}
    assert by_name["sft"]["task_id"] == f"{run_id}:sft:1"
    assert by_name["sft"]["agent_id"] == "gpu-1"
    assert by_name["evaluate"]["outputs"] == {"checkpoint": f"/ckpt/{run_id}:evaluate:1"}
    assert all(s["started_at"] and s["finished_at"] for s in status["stages"])
    assert next(r["stage"] for r in read_record(tmp_path / "record.jsonl")) == "preprocess"


async def test_resume_runs_only_the_failed_stage_and_its_descendants(
    kafka_settings, database_url, tmp_path, run_id
):
    record = tmp_path / "record.jsonl"
    agent = ScriptedAgent(kafka_settings, "gpu-1", record, fail={"c": [1]})
    async with running(kafka_settings, database_url, agent):
        executor = PipelineExecutor(run_id, settings=kafka_settings, database_url=database_url)
        await executor.aexecute(
            [cmd("a"), cmd("b", ["a"]), cmd("c", ["a"]), cmd("d", ["c"]), cmd("e", ["b"])]
        )
        failed = await _status(run_id, database_url, {"failed"})
        assert {s["name"]: s["status"] for s in failed["stages"]} == {
            "a": "succeeded",
            "b": "succeeded",
            "c": "failed",
            "d": "pending",
            "e": "succeeded",
        }
        before = len(read_record(record))
        await executor.aresume()
        done = await _status(run_id, database_url, {"succeeded"})
    rerun = [(r["stage"], r["attempt"]) for r in read_record(record)[before:]]
    assert rerun == [("c", 2), ("d", 1)]
    c = next(s for s in done["stages"] if s["name"] == "c")
    assert [a["status"] for a in c["attempts"]] == ["failed", "succeeded"]


async def test_kill_9_at_random_moments_runs_every_stage_attempt_exactly_once(
    kafka_settings, tmp_path, run_id
):
    # 9 stages, fan-out and fan-in, one stage failing once and retried.
    stages = [
        cmd("prep"),
        cmd("sft", ["prep"]),
        cmd("grpo", ["sft"]),
        cmd("dpo", ["sft"]),
        cmd("ppo", ["sft"], retries={"max_attempts": 2, "backoff_s": 0.5}),
        cmd("eval_grpo", ["grpo"]),
        cmd("eval_dpo", ["dpo"]),
        cmd("eval_ppo", ["ppo"]),
        cmd("report", ["eval_grpo", "eval_dpo", "eval_ppo"]),
    ]
    record = tmp_path / "record.jsonl"
    # The last stage is held until the 20th kill, so every kill lands while the pipeline runs.
    release = asyncio.Event()
    agent = ScriptedAgent(
        kafka_settings,
        "gpu-1",
        record,
        default_duration=1.0,
        fail={"ppo": [1]},
        holds={"report": release},
    )
    await agent.start()
    rng = random.Random(20261128)
    log = tmp_path / "orchestrator.log"
    kills = 0
    try:
        await PipelineExecutor(run_id, settings=kafka_settings).aexecute(stages)
        while True:
            ready_before = log.read_text().count("owns partitions") if log.exists() else 0
            process = start_orchestrator(kafka_settings, log, "--no-projection")
            if kills >= 20:
                release.set()
                break  # enough: let this one finish the pipeline
            if rng.random() < 0.25:
                # kill while it starts up, fences, or replays
                await asyncio.sleep(rng.uniform(0.2, 3.0))
            else:
                await wait_for(
                    lambda p=process, n=ready_before: (
                        log.read_text().count("owns partitions") > n or not p.running
                    ),
                    timeout=60,
                    what="the orchestrator to own its partitions",
                )
                # ... or while it is deciding and committing
                await asyncio.sleep(rng.uniform(0.05, 1.5))
            if not process.running:
                raise AssertionError(f"orchestrator died by itself:\n{log.read_text()[-3000:]}")
            process.kill()
            kills += 1

        async def finished():
            return any(e.type == "PipelineSucceeded" for e in await read_log(kafka_settings))

        await wait_for(finished, timeout=120, interval=0.5, what="the pipeline to succeed")
        process.stop()
    finally:
        await agent.stop()

    events = await read_log(kafka_settings)
    assert [e.type for e in events if e.type.startswith("Pipeline")][-1] == "PipelineSucceeded"
    ids = Counter(e.id for e in events)
    assert [i for i, n in ids.items() if n > 1] == []
    dispatched = Counter(
        (e.data.stage, e.data.attempt) for e in events if e.type == "StageDispatched"
    )
    assert all(n == 1 for n in dispatched.values()), dispatched
    executed = Counter((r["stage"], r["attempt"]) for r in read_record(record))
    assert all(n == 1 for n in executed.values()), executed
    assert set(executed) == {(s["name"], 1) for s in stages} | {("ppo", 2)}
    assert kills >= 20


async def test_a_command_for_an_unknown_pipeline_is_refused_by_the_sdk_and_on_the_record(
    kafka_settings, database_url, tmp_path, run_id
):
    from posttrain.events import Envelope
    from posttrain.events.kafka import EventProducer
    from posttrain.events.messages import ResumePipeline
    from posttrain.events.topics import Topic
    from posttrain.orchestrator.client import UnknownPipeline

    ghost = f"{run_id}-ghost"
    with pytest.raises(UnknownPipeline, match="never submitted"):
        await PipelineExecutor(ghost, settings=kafka_settings, database_url=database_url).aresume()
    agent = ScriptedAgent(kafka_settings, "gpu-1", tmp_path / "record.jsonl")
    async with running(kafka_settings, database_url, agent):
        # Sent past the SDK's check (as another client could): the orchestrator answers it.
        async with EventProducer(kafka_settings) as producer:
            await producer.send(
                Topic.PIPELINE_COMMANDS,
                Envelope.create(ResumePipeline(pipeline_id=ghost), key=ghost),
            )

        async def refused():
            return [
                e
                for e in await read_log(kafka_settings)
                if e.data.TYPE == "CommandRefused" and e.data.pipeline_id == ghost
            ]

        found = await wait_for(refused, timeout=60, what="the CommandRefused event")
    assert found[0].data.command == "ResumePipeline"
    assert "never submitted" in found[0].data.reason
    assert await aget_pipeline_status(ghost, database_url) is None  # no ghost in the read model
