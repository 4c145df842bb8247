"""Record a golden history: ``python -m tests.unit.orchestrator.golden.record NAME``.

Each scenario is played through the pure core; its event log is written as the exact bytes that
go on Kafka (one envelope per line) with the state it must replay to. Once committed, these files
are history: a later change to the core or the contracts must still replay them to the same
state (or come with an upcaster), never regenerate them to make a test pass.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from posttrain.events import encode
from posttrain.events.messages import (
    ActionApplied,
    ActionRefused,
    CheckpointSaved,
    RequestAction,
    ResumePipeline,
    StagePaused,
)
from posttrain.orchestrator.core.decide import AgentView
from posttrain.orchestrator.core.state import ACTIVE
from tests.unit.orchestrator.sim import World

HERE = Path(__file__).parent


def cmd(name, deps=(), **extra):
    return {
        "name": name,
        "task": "command",
        "params": {"argv": ["run", name]},
        "depends_on": list(deps),
        **extra,
    }


def seed_pipeline() -> World:
    w = World(pipeline_id="golden-seed")
    w.submit(
        [
            {
                "name": "preprocess",
                "task": "preprocess_dataset",
                "params": {"input_path": "d.jsonl"},
            },
            {
                "name": "train_sft",
                "task": "train_model",
                "depends_on": ["preprocess"],
                "params": {
                    "job_uuid": "sft-1",
                    "config": {"algorithm": "sft", "model_path": "tiny"},
                },
            },
            {
                "name": "train_rl_1",
                "task": "train_model",
                "depends_on": ["train_sft"],
                "params": {
                    "config": {
                        "algorithm": "grpo",
                        "model_path": "${train_sft.checkpoint}",
                        "kl_coef": 0.1,
                    }
                },
            },
            {
                "name": "train_rl_2",
                "task": "train_model",
                "depends_on": ["train_sft"],
                "params": {"config": {"algorithm": "dpo", "model_path": "${train_sft.checkpoint}"}},
            },
            {
                "name": "evaluate",
                "task": "run_evaluation",
                "depends_on": ["train_rl_1", "train_rl_2"],
                "params": {"model_path": "${train_rl_1.checkpoint}"},
            },
        ]
    )
    for stage in ["preprocess", "train_sft", "train_rl_1", "train_rl_2", "evaluate"]:
        w.succeed(stage)
    return w


def failure_and_resume() -> World:
    w = World(
        pipeline_id="golden-resume",
        agents={"a1": AgentView("a1", 2, 2), "a2": AgentView("a2", 2, 2)},
    )
    w.submit(
        [
            cmd("a"),
            cmd("b", ["a"], retries={"max_attempts": 2, "backoff_s": 3}),
            cmd("c", ["a"]),
            cmd("d", ["b", "c"]),
        ]
    )
    w.succeed("a")
    w.fail("b")
    w.tick(4)
    w.fail("b")
    w.succeed("c")
    w.send(ResumePipeline(pipeline_id="golden-resume"))
    w.succeed("b")
    w.succeed("d")
    return w


def lost_agent() -> World:
    w = World(
        pipeline_id="golden-lost", agents={"a1": AgentView("a1", 1, 1), "a2": AgentView("a2", 1, 1)}
    )
    w.submit([cmd("train", resources={"gpus": 1})])
    w.start("train")
    w.tick(20, silent=[w.run_for("train").agent_id])
    w.succeed("train")
    return w


def actions() -> World:
    """Every way a requested action ends: sent and applied (a rollback), refused by the
    orchestrator (unknown stage, a command stage asked to pause), refused by the agent, a dry
    run; a poisoned checkpoint that a retry does not go on from."""
    w = World(pipeline_id="golden-actions")
    w.submit(
        [
            {
                "name": "train",
                "task": "train_model",
                "params": {"config": {"algorithm": "sft", "model_path": "tiny"}},
                "retries": {"max_attempts": 2, "backoff_s": 0},
            },
            cmd("verl"),
        ]
    )
    w.start("train")
    w.start("verl")
    ids = w._report(w.run_for("train"))

    def request(action_id: str, stage: str, action: str, **fields: Any) -> RequestAction:
        return RequestAction(
            action_id=action_id,
            pipeline_id="golden-actions",
            stage=stage,
            attempt=1,
            action=action,
            reason="golden",
            **fields,
        )

    w.send(CheckpointSaved(**ids, step=100, path="/c/100"))
    w.send(request("rb", "train", "rollback", anomaly_id="an-1", step=150, skip_batches=300))
    w.send(
        ActionApplied(
            **ids,
            action_id="rb",
            action="rollback",
            step=152,
            details={"from_step": 152, "to_step": 100, "checkpoint": "/c/100"},
        )
    )
    w.send(request("ghost", "nope", "pause"))
    w.send(request("verl-pause", "verl", "pause", anomaly_id="an-2", step=45))
    w.send(request("dry", "train", "adjust_learning_rate", factor=0.1, dry_run=True))
    w.send(request("ckpt", "train", "force_checkpoint"))
    w.send(
        ActionRefused(
            action_id="ckpt",
            pipeline_id="golden-actions",
            stage="train",
            attempt=1,
            action="force_checkpoint",
            reason="the stage ended before applying it",
            agent_id=ids["agent_id"],
            command_id=ids["command_id"],
            job_id=ids["job_id"],
        )
    )
    w.send(CheckpointSaved(**ids, step=200, path="/c/200", non_finite=["weights", "loss"]))
    w.send(
        StagePaused(
            **ids,
            step=201,
            checkpoint="/c/201",
            non_finite=["weights", "loss"],
            resume_checkpoint="/c/100",
        )
    )
    w.fail("train")
    w.succeed("verl")
    w.tick(1)  # attempt 2 goes on from /c/100, the last checkpoint with finite weights
    return w


def stage_accepts() -> World:
    """What a stage takes follows its params: a PPO stage on verl takes pause, resume and a
    learning-rate change and refuses force-checkpoint and rollback; a command stage that
    declares ``accepts: [pause]`` is paused and resumed and refuses a learning-rate change."""
    w = World(pipeline_id="golden-accepts")
    w.submit(
        [
            {
                "name": "ppo",
                "task": "train_model",
                "params": {
                    "config": {
                        "algorithm": "ppo",
                        "model_path": "tiny",
                        "train_data_path": "t.parquet",
                        "kl_coef": 0.001,
                    }
                },
                "resources": {"gpus": 1},
            },
            {
                "name": "job",
                "task": "command",
                "params": {"argv": ["run", "job"], "accepts": ["pause"]},
            },
        ]
    )
    w.start("ppo")
    w.start("job")
    ppo = w._report(w.run_for("ppo"))
    job = w._report(w.run_for("job"))

    def request(action_id: str, stage: str, action: str, **fields: Any) -> RequestAction:
        return RequestAction(
            action_id=action_id,
            pipeline_id="golden-accepts",
            stage=stage,
            attempt=1,
            action=action,
            reason="golden",
            **fields,
        )

    w.send(CheckpointSaved(**ppo, step=10, path="/c/global_step_10"))
    w.send(request("ppo-lr", "ppo", "adjust_learning_rate", factor=0.1))
    w.send(
        ActionApplied(
            **ppo,
            action_id="ppo-lr",
            action="adjust_learning_rate",
            step=10,
            details={"factor": 0.1, "relaunched_from": "/c/global_step_10"},
        )
    )
    w.send(request("ppo-ckpt", "ppo", "force_checkpoint"))
    w.send(request("ppo-rb", "ppo", "rollback", step=12))
    w.send(request("job-lr", "job", "adjust_learning_rate", factor=0.5))
    w.send(request("job-pause", "job", "pause"))
    w.send(ActionApplied(**job, action_id="job-pause", action="pause", step=0))
    w.send(StagePaused(**job, step=0))
    w.send(request("job-resume", "job", "resume"))
    w.succeed("ppo")
    w.succeed("job")
    return w


def slots() -> World:
    """A fan-out of seven on one agent with two stage slots: stages go as heartbeats show room,
    never more at once than the agent runs; one is rejected in a race (another instance filled
    the agent) and is sent again, under the same attempt, only after a heartbeat the agent sent
    later shows room."""
    w = World(
        pipeline_id="golden-slots",
        agents={"a1": AgentView("a1", 0, 0, free_slots=2, beat_at=1000.0)},
    )

    def active() -> int:
        return sum(1 for s in w.state.stages.values() if s.status in ACTIVE)

    def reserved() -> None:  # what the shell's reservations show between heartbeats
        w.heartbeat(free_slots=2 - active())

    fan = [f"f{i}" for i in range(1, 8)]
    w.submit([cmd("root"), *(cmd(f, ["root"]) for f in fan), cmd("join", fan)])
    reserved()
    w.succeed("root")  # the last heartbeat still shows root: one of the fan-out goes
    reserved()
    w.tick(0.5, free_slots=1)
    reserved()
    # A race: another instance's stage took the slot. Our view (its heartbeat from before,
    # less our reservations) shows one free: f1 is not sent there again, f3 is.
    w.agents["a1"] = replace(w.agents["a1"], free_slots=1)
    w.reject("f1")
    w.tick(0.5, free_slots=0)  # the next heartbeat shows the agent full: nothing is sent
    w.succeed("f2")
    w.tick(0.5, free_slots=1)  # room again: f1 goes back
    reserved()
    while w.status() == "running":
        running = [s.name for s in w.state.stages.values() if s.status in ACTIVE]
        if running:
            w.succeed(running[0])
        w.tick(0.5, free_slots=2 - active())
        reserved()
    return w


SCENARIOS = {
    "seed_pipeline": seed_pipeline,
    "failure_and_resume": failure_and_resume,
    "lost_agent": lost_agent,
    "actions": actions,
    "stage_accepts": stage_accepts,
    "slots": slots,
}


def main(names: list[str]) -> None:
    """Record the named scenarios (a committed history is never recorded again)."""
    for name in names:
        play = SCENARIOS[name]
        world = play()
        lines = []
        for envelope in world.log:
            _, value, _ = encode(envelope)
            doc = json.loads(value)
            if name == "failure_and_resume" and doc["type"] == "StageFailed":
                # As an older agent wrote it: StageFailed v1 had no failure kind.
                doc["version"] = 1
                doc["data"] = {k: v for k, v in doc["data"].items() if k not in ("kind", "details")}
                lines.append(json.dumps(doc, separators=(",", ":")))
                continue
            lines.append(value.decode())
        (HERE / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        (HERE / f"{name}.expected.json").write_text(
            json.dumps(world.view(), indent=1, sort_keys=True) + "\n"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
