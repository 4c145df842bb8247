"""The orchestrator's transactions on the real broker: every write is accepted the first time.

The broker checks each transactional write with the transaction coordinator; a write it checks
while the coordinator is adding a partition or the consumer's offsets to the same transaction is
refused as retriable (``NOT_ENOUGH_REPLICAS`` to this client), and the client writes it again
after its retry backoff, 100 ms. Found by ``bench.fleet``: about one transaction in eight waited
so, the largest share of the time from a stage's report to the next RunStage. The orchestrator
now hands all of a transaction's records over at once and adds the offsets once they are
acknowledged."""

from __future__ import annotations

import asyncio
import logging

import pytest

from posttrain.orchestrator.client import PipelineExecutor
from posttrain.orchestrator.shell.service import Orchestrator
from posttrain.testing.orchestrator import read_log
from posttrain.testing.scripted_agent import ScriptedAgent
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

PIPELINES = 12
FAN = 6


def fan_out(prefix: str) -> list[dict[str, object]]:
    def cmd(name: str, deps: list[str]) -> dict[str, object]:
        return {
            "name": name,
            "task": "command",
            "params": {"argv": ["train", name]},
            "depends_on": deps,
        }

    middle = [cmd(f"{prefix}{i}", ["prep"]) for i in range(FAN)]
    return [cmd("prep", []), *middle, cmd("report", [m["name"] for m in middle])]


async def test_no_transactional_write_is_refused_and_written_again(
    kafka_settings, tmp_path, run_id, caplog
):
    caplog.set_level(logging.WARNING, logger="aiokafka")
    agents = [
        ScriptedAgent(
            kafka_settings, f"gpu-{i}", tmp_path / f"record-{i}.jsonl", default_duration=0.05
        )
        for i in range(3)
    ]
    orchestrator = Orchestrator(kafka_settings, tick_interval_s=0.2, session_timeout_ms=2000)
    stop = asyncio.Event()
    await orchestrator.start()
    for agent in agents:
        await agent.start()
    loop = asyncio.create_task(orchestrator.run(stop))
    ids = [f"{run_id}-{n}" for n in range(PIPELINES)]
    try:
        for pid in ids:
            await PipelineExecutor(pid, settings=kafka_settings).aexecute(fan_out("s"))

        async def ended():
            done = {
                e.key
                for e in await read_log(kafka_settings)
                if e.type in ("PipelineSucceeded", "PipelineFailed")
            }
            return done if done >= set(ids) else None

        await wait_for(ended, timeout=120, interval=0.5, what="every pipeline to end")
    finally:
        stop.set()
        await asyncio.gather(loop, return_exceptions=True)
        for agent in agents:
            await agent.stop()
        await orchestrator.stop()

    events = await read_log(kafka_settings)
    assert sum(e.type == "PipelineSucceeded" for e in events) == PIPELINES
    assert orchestrator.stats.transactions_aborted == 0
    refused = [r.getMessage() for r in caplog.records if "error produce response" in r.getMessage()]
    assert refused == []
