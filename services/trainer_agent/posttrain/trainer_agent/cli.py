"""``posttrain-agent`` (and ``posttrain agent``): run a trainer agent on this node.

    posttrain-agent --name gpu-node-1 --gpus 8 --labels a100,ib --work-dir /data/posttrain-agent

Kafka comes from ``KAFKA_BOOTSTRAP_SERVERS`` and ``POSTTRAIN_TOPIC_NAMESPACE``. SIGTERM or
Ctrl-C stops the agent and leaves its stages running; starting it again on the same work
directory re-attaches to them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from posttrain.events.kafka import KafkaSettings
from posttrain.service.commands import command_app, run_app
from posttrain.service.logs import configure_json_logging
from posttrain.service.settings import posttrain_home

app = command_app()


@app.command(help=__doc__)
def run(
    name: Annotated[
        str,
        typer.Option(
            default_factory=socket.gethostname, show_default=False, help="agent id (default: host)"
        ),
    ],
    gpus: Annotated[int, typer.Option(help="GPUs this agent offers")] = 0,
    labels: Annotated[str, typer.Option(help="comma-separated labels, e.g. a100,ib")] = "",
    slots: Annotated[
        int | None, typer.Option(help="stages at once (default: the number of GPUs, at least 1)")
    ] = None,
    work_dir: Annotated[
        str | None,
        typer.Option(
            help="journal, stage logs, checkpoints (default ~/.cache/posttrain/agents/NAME)"
        ),
    ] = None,
    heartbeat: Annotated[float, typer.Option(help="seconds between beats")] = 5.0,
    stage_threads: Annotated[
        int | None, typer.Option(help="OMP_NUM_THREADS for stage processes")
    ] = None,
    no_zygote: Annotated[
        bool,
        typer.Option(
            "--no-zygote",
            help="start each stage in a fresh interpreter instead of forking it "
            "from a process with torch imported",
        ),
    ] = False,
    http_host: Annotated[str, typer.Option(help="for /healthz and /metrics")] = "127.0.0.1",
    http_port: Annotated[
        int, typer.Option(help="for /healthz and /metrics (0: any free port)")
    ] = 9466,
    no_http: Annotated[bool, typer.Option("--no-http", help="no /healthz and /metrics")] = False,
    log_level: Annotated[str, typer.Option()] = "INFO",
) -> None:
    configure_json_logging(log_level)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)

    from posttrain.trainer_agent.agent import Agent, AgentConfig
    from posttrain.trainer_agent.launcher import Launcher, SpawnLauncher

    work = Path(work_dir) if work_dir else posttrain_home() / "agents" / name
    stage_env: tuple[tuple[str, str], ...] = ()
    if stage_threads:
        stage_env = (("OMP_NUM_THREADS", str(stage_threads)),)
    config = AgentConfig(
        agent_id=name,
        work_dir=str(work),
        gpus=gpus,
        labels=frozenset(label for label in labels.split(",") if label),
        slots=slots or max(1, gpus),
        heartbeat_s=heartbeat,
        stage_env=stage_env,
        http_host=http_host,
        http_port=None if no_http else http_port,
    )
    launcher: Launcher | None = SpawnLauncher() if no_zygote else None
    agent = Agent(config, KafkaSettings.from_env(client_id=f"agent-{name}"), launcher)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
        await agent.run()

    asyncio.run(run())
    if launcher is not None:
        launcher.close()


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, "posttrain agent")


if __name__ == "__main__":
    sys.exit(main())
