"""A real orchestrator process serves /healthz and /metrics on the port it picked, and logs
JSON lines; its counters follow a pipeline that runs to the end."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from posttrain.orchestrator.client import PipelineExecutor
from posttrain.orchestrator.shell.service import expected_partitions
from posttrain.testing.orchestrator import read_log, start_orchestrator
from posttrain.testing.scripted_agent import ScriptedAgent
from tests.prometheus import samples
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

P = "posttrain_orchestrator"


def _log_lines(log: Path) -> list[dict]:
    lines = []
    for line in log.read_text().splitlines() if log.exists() else []:
        try:
            lines.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue  # a runtime warning or the like, printed by something else
    return lines


def _logged_port(log: Path) -> int | None:
    for doc in _log_lines(log):
        if doc.get("message") == "http endpoints listening":
            return int(doc["port"])
    return None


async def _get(port: int, path: str) -> tuple[int, bytes]:
    def call() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    return await asyncio.to_thread(call)


async def _samples(port: int) -> dict[str, float]:
    status, body = await _get(port, "/metrics")
    assert status == 200
    return samples(body.decode())


async def test_health_and_metrics_of_a_running_orchestrator(kafka_settings, tmp_path, run_id):
    log = tmp_path / "orchestrator.log"
    agent = ScriptedAgent(kafka_settings, "gpu-1", tmp_path / "record.jsonl")
    process = start_orchestrator(kafka_settings, log, "--no-projection", "--http", "127.0.0.1:0")
    await agent.start()
    try:
        port = await wait_for(
            lambda: _logged_port(log) or not process.running,
            timeout=60,
            what="the orchestrator to log its HTTP port",
        )
        assert process.running, process.tail()
        everything = list(range(expected_partitions()))

        async def owns_everything():
            status, body = await _get(port, "/healthz")
            health = orjson.loads(body)
            # Owned from the fencing on; replayed a moment later.
            ready = health["partitions"] == everything and not health["replaying"]
            return status == 200 and ready and health

        health = await wait_for(owns_everything, timeout=60, what="every partition replayed")
        assert health["status"] == "ok"
        assert health["pipelines"] == 0 and health["seconds_since_poll"] < 30

        await PipelineExecutor(run_id, settings=kafka_settings).aexecute(
            [
                {"name": "a", "task": "command", "params": {"argv": ["a"]}},
                {"name": "b", "task": "command", "params": {"argv": ["b"]}, "depends_on": ["a"]},
            ]
        )

        async def all_counted():
            # The state in memory runs ahead of the log while a transaction is open; the
            # counters follow what committed: wait for the last event to be on the log.
            events = await read_log(kafka_settings)
            if not any(e.type == "PipelineSucceeded" for e in events):
                return None
            samples = await _samples(port)
            return samples[f"{P}_events_appended_total"] == len(events) and samples

        samples = await wait_for(all_counted, timeout=60, what="the pipeline to succeed")
        assert samples[f'{P}_pipelines{{status="succeeded"}}'] == 1
        assert samples[f"{P}_up"] == 1
        assert samples[f"{P}_owned_partitions"] == len(everything)
        assert samples[f'{P}_agent_commands_total{{type="RunStage"}}'] == 2
        assert samples[f'{P}_transactions_total{{outcome="committed"}}'] >= 3
        assert samples[f'{P}_transactions_total{{outcome="aborted"}}'] == 0
        assert samples[f"{P}_records_total"] >= 5  # the submission and four stage reports
        assert samples[f"{P}_replays_total"] >= 1
        assert samples[f"{P}_replaying"] == 0

        status, body = await _get(port, "/healthz")
        assert status == 200 and orjson.loads(body)["pipelines"] == 1
        assert (await _get(port, "/nothing"))[0] == 404
    finally:
        process.stop()
        await agent.stop()
    # The logs are JSON, with the fields a log search filters on.
    owns = [d for d in _log_lines(log) if d.get("message", "").startswith("orchestrator owns")]
    assert owns and owns[-1]["partitions"] == everything and owns[-1]["level"] == "info"
