"""The main job, as far as the platform goes today.

Runs the example pipeline's path through the real local stack: the pipeline file is read into the
event contracts, submitted as a ``SubmitPipeline`` command to Kafka, read back from the broker and
decoded, and the stack is checked by ``posttrain doctor``. Each capability that lands extends this
script until it runs the whole pipeline (orchestrator, trainer agents, metrics, diagnostics).

    python -m examples.demo [--pipeline examples/pipelines/arithmetic.yaml]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from pathlib import Path

import yaml

from posttrain.doctor import run_doctor
from posttrain.events import Envelope
from posttrain.events.kafka import EventConsumer, EventProducer, KafkaSettings
from posttrain.events.messages import StageSpec, SubmitPipeline
from posttrain.events.topics import Topic

HERE = Path(__file__).resolve().parent


def load_pipeline(path: Path, pipeline_id: str) -> SubmitPipeline:
    spec = yaml.safe_load(path.read_text())
    return SubmitPipeline(
        pipeline_id=pipeline_id,
        name=spec["name"],
        stages=[StageSpec.model_validate(stage) for stage in spec["stages"]],
        submitted_by="demo",
    )


async def submit_and_read_back(settings: KafkaSettings, command: SubmitPipeline) -> Envelope:
    envelope = Envelope.create(command, key=command.pipeline_id)
    async with EventProducer(settings) as producer:
        partition, offset = await producer.send(Topic.PIPELINE_COMMANDS, envelope)
    print(
        f"submitted {command.name} as {command.pipeline_id} "
        f"({settings.topic(Topic.PIPELINE_COMMANDS)}[{partition}]@{offset})"
    )
    async with EventConsumer(
        settings, [Topic.PIPELINE_COMMANDS], group_id=None, name="demo"
    ) as consumer:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while loop.time() < deadline:
            for received in await consumer.getmany(timeout_ms=500):
                if received.envelope.id == envelope.id:
                    return received.envelope
    raise SystemExit("the submitted command did not come back from the broker within 30 s")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pipeline", default=str(HERE / "pipelines" / "arithmetic.yaml"))
    args = parser.parse_args()
    if run_doctor() != 0:
        return 1
    command = load_pipeline(Path(args.pipeline), f"demo-{uuid.uuid4().hex[:8]}")
    back = await submit_and_read_back(KafkaSettings.from_env(client_id="demo"), command)
    assert back.data == command
    print("read back from Kafka:")
    for stage in back.data.stages:
        deps = ", ".join(stage.depends_on) or "-"
        print(f"  {stage.name:<12} task={stage.task:<20} depends_on={deps}")
    print("demo: the pipeline travelled through the real broker intact")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
