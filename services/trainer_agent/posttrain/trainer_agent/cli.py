"""``posttrain-agent`` (and ``posttrain agent``): run a trainer agent on this node.

    posttrain-agent --name gpu-node-1 --gpus 8 --labels a100,ib --work-dir /data/posttrain-agent

Kafka comes from ``KAFKA_BOOTSTRAP_SERVERS`` and ``POSTTRAIN_TOPIC_NAMESPACE``. SIGTERM or
Ctrl-C stops the agent and leaves its stages running; starting it again on the same work
directory re-attaches to them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from posttrain.events.kafka import KafkaSettings
from posttrain.service.logs import configure_json_logging
from posttrain.service.settings import posttrain_home


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="posttrain agent",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--name", default=socket.gethostname(), help="agent id (default: host)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs this agent offers")
    parser.add_argument("--labels", default="", help="comma-separated labels, e.g. a100,ib")
    parser.add_argument(
        "--slots",
        type=int,
        default=None,
        help="stages at once (default: the number of GPUs, at least 1)",
    )
    parser.add_argument(
        "--work-dir",
        default=None,
        help="journal, stage logs, checkpoints (default ~/.cache/posttrain/agents/NAME)",
    )
    parser.add_argument("--heartbeat", type=float, default=5.0, help="seconds between beats")
    parser.add_argument(
        "--stage-threads", type=int, default=None, help="OMP_NUM_THREADS for stage processes"
    )
    parser.add_argument(
        "--no-zygote",
        action="store_true",
        help="start each stage in a fresh interpreter instead of forking it "
        "from a process with torch imported",
    )
    parser.add_argument("--http-host", default="127.0.0.1", help="for /healthz and /metrics")
    parser.add_argument(
        "--http-port", type=int, default=9466, help="for /healthz and /metrics (0: any free port)"
    )
    parser.add_argument("--no-http", action="store_true", help="no /healthz and /metrics")
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_json_logging(args.log_level)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)

    from posttrain.trainer_agent.agent import Agent, AgentConfig
    from posttrain.trainer_agent.launcher import Launcher, SpawnLauncher

    home = posttrain_home()
    work_dir = Path(args.work_dir) if args.work_dir else home / "agents" / args.name
    stage_env: tuple[tuple[str, str], ...] = ()
    if args.stage_threads:
        stage_env = (("OMP_NUM_THREADS", str(args.stage_threads)),)
    config = AgentConfig(
        name=args.name,
        work_dir=work_dir,
        gpus=args.gpus,
        labels=frozenset(label for label in args.labels.split(",") if label),
        slots=args.slots or max(1, args.gpus),
        heartbeat_s=args.heartbeat,
        stage_env=stage_env,
        http_host=args.http_host,
        http_port=None if args.no_http else args.http_port,
    )
    launcher: Launcher | None = SpawnLauncher() if args.no_zygote else None
    agent = Agent(config, KafkaSettings.from_env(client_id=f"agent-{args.name}"), launcher)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
        await agent.run()

    asyncio.run(run())
    if launcher is not None:
        launcher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
