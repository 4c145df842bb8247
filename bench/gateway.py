"""Reading a running pipeline through the gateway: 100 clients at once, with live streams open.

A real gateway process and a real orchestrator process (with its projection) run on a fresh
topic namespace and a fresh database; a scripted agent stands in for the GPU node and runs a
chain of stages that lasts the whole benchmark, and points of the running stage's job are
stored as the metrics ingest stores them (with its NOTIFY), so the streams have something to
push. Each client reads the pipeline's status, then its history, then waits ``--interval``
(a web page refreshing itself); each also holds a server-sent event stream of the pipeline
open. The baseline, in the same run and on the same pipeline, is one client and no streams.

    python -m bench.gateway [--clients 100] [--seconds 15] [--interval 0.5]

Prints p50/p99 of both reads for the baseline and under load, the events the streams got, and
last ``status_p99_ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import aiohttp
import asyncpg
import typer

from bench.common import drop_database, drop_namespace, fresh_database, fresh_namespace
from posttrain.events.messages.metrics import MetricPoint
from posttrain.metrics_ingest.core.wire import rows_from_points
from posttrain.metrics_ingest.store import MetricsWriter, prepare_connection
from posttrain.orchestrator.client import PipelineExecutor
from posttrain.service.commands import command_app, run_app
from posttrain.testing import services
from posttrain.testing.scripted_agent import ScriptedAgent


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Reads:
    def __init__(self) -> None:
        self.status: list[float] = []
        self.history: list[float] = []
        self.errors = 0

    def line(self, name: str) -> str:
        return (
            f"{name}: {len(self.status)} status reads p50 {percentile(self.status, 0.5) * 1e3:.1f}"
            f" ms p99 {percentile(self.status, 0.99) * 1e3:.1f} ms; {len(self.history)} history"
            f" reads p50 {percentile(self.history, 0.5) * 1e3:.1f} ms"
            f" p99 {percentile(self.history, 0.99) * 1e3:.1f} ms; errors {self.errors}"
        )


# aiohttp as the clients: httpx's connection pool, not the gateway, was what limited an earlier
# version of this benchmark (the clients' process at 55 % of a core, the gateway at 10 %).


async def reader(
    client: aiohttp.ClientSession,
    base: str,
    pipeline: str,
    reads: Reads,
    interval: float,
    until: float,
) -> None:
    # Clients are not in step: each starts at a random point of its interval.
    await asyncio.sleep(random.uniform(0, interval))
    while time.monotonic() < until:
        for path, into in (
            (f"/v1/pipelines/{pipeline}", reads.status),
            (f"/v1/pipelines/{pipeline}/history", reads.history),
        ):
            started = time.perf_counter()
            async with client.get(base + path) as response:
                await response.read()
                ok = response.status == 200
            took = time.perf_counter() - started
            if ok:
                into.append(took)
            else:
                reads.errors += 1
        await asyncio.sleep(interval)


async def follower(
    client: aiohttp.ClientSession, base: str, pipeline: str, counts: dict[str, int]
) -> None:
    async with client.get(base + f"/v1/pipelines/{pipeline}/events") as response:
        async for line in response.content:
            if line.startswith(b"event: "):
                kind = line.removeprefix(b"event: ").strip().decode()
                counts[kind] = counts.get(kind, 0) + 1


async def feed_metrics(dsn: str, pipeline: str, stages: list[str], until: float) -> int:
    """Store points of every stage's job, a batch each 0.2 s, as the ingest would: the
    streams are woken by its NOTIFY."""
    conn = await asyncpg.connect(dsn)
    await prepare_connection(conn)
    writer = MetricsWriter()
    step = 0
    try:
        while time.monotonic() < until:
            step += 10
            points = [
                (s, MetricPoint(step=s, timestamp=time.time(), loss=1.0 / s))
                for s in range(step - 9, step + 1)
            ]
            job = f"{pipeline}.{stages[(step // 100) % len(stages)]}"
            await writer.write(conn, [rows_from_points(job, "bench", points, pipeline_id=pipeline)])
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    return step


@dataclass(frozen=True)
class Shape:
    """The load: ``clients`` readers (and as many open streams), each phase ``seconds`` long,
    a client waiting ``interval`` seconds between reads."""

    clients: int
    seconds: float
    interval: float


async def run(shape: Shape, dsn: str, work: Path) -> None:
    settings = await fresh_namespace("gateway")
    orchestrator = services.orchestrator(settings, work / "orchestrator.log", database_url=dsn)
    gateway = services.gateway(settings, dsn, work / "gateway.log")
    agent = ScriptedAgent(settings, "bench-gpu", work / "agent.jsonl", default_duration=2.0)
    try:
        orchestrator.start()
        gateway.start()
        await asyncio.gather(orchestrator.wait_ready(), gateway.wait_ready())
        await agent.start()
        pipeline = f"bench-{uuid.uuid4().hex[:8]}"
        total = 2 * shape.seconds + 30  # the chain outlasts both phases
        names = [f"s{i:02d}" for i in range(int(total / 2) + 1)]
        stages = [
            {"name": n, "task": "command", "params": {"argv": [n]}}
            | ({"depends_on": [names[i - 1]]} if i else {})
            for i, n in enumerate(names)
        ]
        await PipelineExecutor(pipeline, settings=settings).aexecute(stages, name="bench")
        base = f"http://127.0.0.1:{gateway.port}"
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:

            async def projected() -> bool:
                async with client.get(f"{base}/v1/pipelines/{pipeline}") as response:
                    return response.status == 200

            deadline = time.monotonic() + 60
            while not await projected():
                if time.monotonic() > deadline:
                    raise RuntimeError("the pipeline was not projected in 60 s")
                await asyncio.sleep(0.1)
            until = time.monotonic() + 2 * shape.seconds + 5
            feeding = asyncio.create_task(feed_metrics(dsn, pipeline, names, until))

            # Baseline: one client, no streams.
            baseline = Reads()
            await reader(
                client, base, pipeline, baseline, shape.interval, time.monotonic() + shape.seconds
            )

            # Load: every client reads and holds a stream open.
            counts: dict[str, int] = {}
            streams = [
                asyncio.create_task(follower(client, base, pipeline, counts))
                for _ in range(shape.clients)
            ]
            await asyncio.sleep(1.0)  # the streams are open (their first events arrive)
            loaded = Reads()
            assert gateway.process is not None
            cpu = (cpu_seconds(gateway.process.pid), time.process_time())
            end = time.monotonic() + shape.seconds
            await asyncio.gather(
                *(
                    reader(client, base, pipeline, loaded, shape.interval, end)
                    for _ in range(shape.clients)
                )
            )
            gateway_cpu = cpu_seconds(gateway.process.pid) - cpu[0]
            bench_cpu = time.process_time() - cpu[1]
            for task in streams:
                task.cancel()
            for task in streams:
                with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                    await task
            feeding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeding
            async with client.get(f"{base}/v1/pipelines/{pipeline}") as response:
                status = (await response.json())["status"]

        print(f"pipeline: {status} during both phases' reads ({len(names)} stages of 2 s)")
        print(baseline.line("baseline (1 client, no streams)"))
        print(loaded.line(f"load ({shape.clients} clients, {shape.clients} streams open)"))
        print(
            "stream events: "
            + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            + f" (over {shape.clients} streams)"
        )
        print(
            f"cpu under load: gateway {gateway_cpu / shape.seconds:.0%} of a core, "
            f"the clients (this process) {bench_cpu / shape.seconds:.0%}"
        )
        ratio = percentile(loaded.status, 0.99) / percentile(baseline.status, 0.99)
        print(f"status p99 ratio load/baseline: {ratio:.1f}")
        print(f"status_p99_ms: {percentile(loaded.status, 0.99) * 1e3:.1f}")
    finally:
        with contextlib.suppress(Exception):
            await agent.stop()
        services.stop_all([gateway, orchestrator])
        await drop_namespace(settings)


async def main(shape: Shape) -> None:
    from posttrain.service.migrate import apply_migrations

    dsn = await fresh_database("gateway")
    try:
        await apply_migrations(dsn)
        with tempfile.TemporaryDirectory(prefix="bench-gateway-") as work:
            await run(shape, dsn, Path(work))
    finally:
        await drop_database(dsn)


app = command_app()


@app.command()
def _bench(
    clients: Annotated[int, typer.Option(help="readers, each with a stream open")] = 100,
    seconds: Annotated[float, typer.Option(help="each phase's length")] = 15.0,
    interval: Annotated[float, typer.Option(help="a client's wait between reads")] = 0.5,
) -> None:
    """The gateway's reads and live streams, idle and under load."""
    # The clients' own loop on uvloop too (installed with the gateway), so that what is timed
    # is the gateway more than the clients.
    import uvloop

    uvloop.run(main(Shape(clients, seconds, interval)))


if __name__ == "__main__":
    sys.exit(run_app(app, None, "python -m bench.gateway"))
