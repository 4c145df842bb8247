"""Record the golden histories: ``python -m tests.unit.orchestrator.golden.record``.

Each scenario is played through the pure core; its event log is written as the exact bytes that
go on Kafka (one envelope per line) with the state it must replay to. Once committed, these files
are history: a later change to the core or the contracts must still replay them to the same
state (or come with an upcaster), never regenerate them to make a test pass.
"""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.events import encode
from posttrain.events.messages import ResumePipeline
from posttrain.orchestrator.core.decide import AgentView
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


SCENARIOS = {
    "seed_pipeline": seed_pipeline,
    "failure_and_resume": failure_and_resume,
    "lost_agent": lost_agent,
}


def main() -> None:
    for name, play in SCENARIOS.items():
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
    main()
