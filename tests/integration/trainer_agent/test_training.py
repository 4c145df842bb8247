"""Real training through the agent, on the real broker: preprocess -> SFT -> evaluation, GRPO
on a verifiable task, DPO. Tiny models, fixed seeds, a few seconds each on a CPU."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from posttrain.events.messages import CORE_FIELDS, AgentHeartbeat
from posttrain.events.topics import Topic
from tests.integration.trainer_agent.conftest import DPO, EVAL, TRAIN, tiny_sft
from tests.integration.trainer_agent.topics import (
    TopicReader,
    finished,
    points_by_key,
    quarter_means,
)
from tests.prometheus import samples

pytestmark = pytest.mark.integration


async def test_preprocess_sft_and_evaluation_learn_and_report_canonical_metrics(
    start_agent, kafka_settings
):
    agent = await start_agent(labels=frozenset({"cpu"}))
    preprocess = agent.run_stage("preprocess_dataset", {"input_path": TRAIN}, stage="prep")
    async with TopicReader(kafka_settings, Topic.STAGE_REPORTS) as reports:
        await agent.send(preprocess)
        done = await reports.wait(lambda ms: finished(ms, preprocess.command_id), timeout=120)
        assert done.TYPE == "StageSucceeded", done
        assert done.outputs["rows"] == 80 and done.outputs["tokens"] > 80 * 4
        assert "input_ids" in done.outputs["columns"]

        sft = agent.run_stage(
            "train_model",
            {"config": tiny_sft(done.outputs["dataset"], max_steps=200)},
            stage="sft",
        )
        await agent.send(sft)
        trained = await reports.wait(lambda ms: finished(ms, sft.command_id), timeout=180)
        assert trained.TYPE == "StageSucceeded", trained
        checkpoint = Path(trained.outputs["checkpoint"])
        assert (checkpoint / "config.json").exists() and trained.outputs["steps"] == 200
        assert "loss" in trained.outputs["metrics"]

        evaluation = agent.run_stage(
            "run_evaluation",
            {
                "config": {
                    "models": [str(checkpoint), "tiny-llama"],
                    "eval_data_path": EVAL,
                    "reward_funcs": ["arithmetic"],
                }
            },
            stage="eval",
        )
        await agent.send(evaluation)
        evaluated = await reports.wait(lambda ms: finished(ms, evaluation.command_id), timeout=120)
        assert evaluated.TYPE == "StageSucceeded", evaluated
        trained_result, untrained_result = evaluated.outputs["results"]
        assert trained_result["eval_loss"] < untrained_result["eval_loss"]
        assert evaluated.outputs["best_model"] == str(checkpoint)

    async with TopicReader(kafka_settings, Topic.METRICS) as metrics:
        points = await metrics.wait(
            lambda ms: len(points_by_key(ms, sft.job_id)) >= 200 and points_by_key(ms, sft.job_id)
        )
        eval_points = await metrics.wait(
            lambda ms: (
                len(points_by_key(ms, evaluation.job_id)) == 2
                and points_by_key(ms, evaluation.job_id)
            )
        )
    series = sorted(points.values(), key=lambda p: p.step)
    assert [p.step for p in series] == list(range(1, 201))  # every step, once
    losses = [p.loss for p in series]
    first, last = quarter_means(losses)
    assert last < 0.5 * first, (first, last)
    # TRL's names arrive as canonical fields; the rest is kept under custom.
    assert all(p.learning_rate == 3e-3 and p.grad_norm is not None for p in series)
    assert all(p.entropy is not None for p in series)
    assert {"mean_token_accuracy", "num_tokens"} <= set(series[-1].custom)
    assert not set(series[-1].custom) & set(CORE_FIELDS)
    assert series[-1].tokens_per_second and series[-1].tokens_per_second > 0
    assert {p.eval_loss is not None for p in eval_points.values()} == {True}


async def test_grpo_raises_reward_on_the_verifiable_task_and_dpo_completes(
    start_agent, kafka_settings
):
    agent = await start_agent()
    # A weakly trained start: the model writes numbers but often the wrong ones.
    warm = agent.run_stage("train_model", {"config": tiny_sft(max_steps=60)}, stage="warm")
    async with TopicReader(kafka_settings, Topic.STAGE_REPORTS) as reports:
        await agent.send(warm)
        warmed = await reports.wait(lambda ms: finished(ms, warm.command_id), timeout=180)
        assert warmed.TYPE == "StageSucceeded", warmed
        start = warmed.outputs["checkpoint"]
        grpo = agent.run_stage(
            "train_model",
            {
                "config": {
                    "algorithm": "grpo",
                    "model_path": start,
                    "train_data_path": TRAIN,
                    "reward_funcs": ["arithmetic"],
                    "max_steps": 240,
                    "batch_size": 32,
                    "num_generations": 8,
                    "max_completion_length": 3,
                    "learning_rate": 1e-3,
                    "lr_scheduler_type": "constant",
                    "seed": 1,
                    "num_threads": 1,
                }
            },
            stage="grpo",
        )
        dpo = agent.run_stage(
            "train_model",
            {
                "config": {
                    "algorithm": "dpo",
                    "model_path": start,
                    "train_data_path": DPO,
                    "max_steps": 30,
                    "batch_size": 16,
                    "learning_rate": 1e-3,
                    "kl_coef": 0.1,
                    "max_length": 16,
                    "seed": 0,
                    "num_threads": 1,
                }
            },
            stage="dpo",
        )
        await agent.send(grpo)
        done = await reports.wait(lambda ms: finished(ms, grpo.command_id), timeout=240)
        assert done.TYPE == "StageSucceeded", done
        await agent.send(dpo)
        dpo_done = await reports.wait(lambda ms: finished(ms, dpo.command_id), timeout=180)
        assert dpo_done.TYPE == "StageSucceeded", dpo_done

    async with TopicReader(kafka_settings, Topic.METRICS) as metrics:
        grpo_points = await metrics.wait(
            lambda ms: len(points_by_key(ms, grpo.job_id)) >= 240 and points_by_key(ms, grpo.job_id)
        )
        dpo_points = await metrics.wait(
            lambda ms: len(points_by_key(ms, dpo.job_id)) >= 30 and points_by_key(ms, dpo.job_id)
        )
    rewards = [p.reward_mean for p in sorted(grpo_points.values(), key=lambda p: p.step)]
    assert None not in rewards
    first, last = quarter_means(rewards)
    assert last > first, (first, last)
    sample = max(grpo_points.values(), key=lambda p: p.step)
    assert sample.reward_std is not None and sample.response_length_mean is not None
    assert "frac_reward_zero_std" in sample.custom
    dpo_last = max(dpo_points.values(), key=lambda p: p.step)
    assert dpo_last.loss is not None and dpo_last.reward_mean is not None  # rewards/margins
    assert "rewards/chosen" in dpo_last.custom


async def _get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_agent_heartbeats_capacity_serves_health_and_rejects_what_it_cannot_run(
    start_agent, kafka_settings
):
    agent = await start_agent(name="small", gpus=0, labels=frozenset({"cpu", "test"}), http_port=0)
    gpu_stage = agent.run_stage(
        "command", {"argv": ["true"]}, stage="needs-gpu", resources={"gpus": 1}
    )
    label_stage = agent.run_stage(
        "command", {"argv": ["true"]}, stage="needs-a100", resources={"labels": ["a100"]}
    )
    async with TopicReader(kafka_settings, Topic.STAGE_REPORTS) as reports:
        await agent.send(gpu_stage)
        await agent.send(label_stage)
        rejected = await reports.wait(
            lambda ms: (
                len([m for m in ms if m.TYPE == "StageRejected"]) == 2
                and [m for m in ms if m.TYPE == "StageRejected"]
            )
        )
    reasons = {m.stage: m.reason for m in rejected}
    assert "GPU" in reasons["needs-gpu"] and "a100" in reasons["needs-a100"]
    async with TopicReader(kafka_settings, Topic.AGENTS) as beats:
        beat = await beats.wait(
            lambda ms: [m for m in ms if isinstance(m, AgentHeartbeat) and m.agent_id == "small"]
        )
    assert beat[-1].labels == ["cpu", "test"] and beat[-1].gpus == 0 and beat[-1].free_gpus == 0
    port = agent.agent.http.port
    status, body = await _get(port, "/healthz")
    assert status == 200 and json.loads(body)["agent"] == "small"
    status, body = await _get(port, "/metrics")
    assert status == 200
    got = samples(body.decode())
    assert got['posttrain_agent_rejected_total{agent="small"}'] == 2
    assert got['posttrain_agent_commands_total{agent="small",type="RunStage"}'] == 2
