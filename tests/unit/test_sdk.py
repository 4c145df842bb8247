"""The SDK's plain parts: the names ``from posttrain import`` gives, what a ``session`` may be,
a stored point read as the seed reads it, and blocking calls under a running loop."""

from __future__ import annotations

import asyncio
import copy
import importlib
import pickle
import subprocess
import sys

import pytest

import posttrain
from posttrain.events.messages.metrics import MetricPoint
from posttrain.events.runner import run_sync
from posttrain.metrics_ingest.queries import StoredMetric
from posttrain.sdk import database_url_of

SEED_NAMES = [
    "PipelineExecutor",
    "get_pipeline_status",
    "DagResolver",
    "create_training_callback",
    "create_metrics_file_writer",
    "sync_metrics_from_file",
    "flush_metrics",
    "get_latest_metrics",
    "DiagnosticService",
    "send_alert",
]


def test_every_seed_name_imports_from_posttrain_and_the_services_stay_importable():
    for name in SEED_NAMES:
        assert callable(getattr(posttrain, name)), name
    # The shared package still reaches every distribution's modules.
    for module in ("posttrain.events.codec", "posttrain.gateway.app", "posttrain.trainer_agent"):
        importlib.import_module(module)

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = posttrain.nope


def test_importing_a_service_module_does_not_load_the_sdk():
    code = "import sys, posttrain.events; print('posttrain.sdk' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


class _Url:
    def __init__(self, text: str) -> None:
        self.text = text

    def render_as_string(self, hide_password: bool = True) -> str:
        return self.text if not hide_password else self.text.replace("secret", "***")


class _Engine:
    def __init__(self, url: str) -> None:
        self.url = _Url(url)


class _Session:  # what SQLAlchemy's Session shows: get_bind() -> Engine
    def __init__(self, url: str) -> None:
        self._engine = _Engine(url)

    def get_bind(self) -> _Engine:
        return self._engine


def test_a_session_may_be_nothing_a_url_or_a_sqlalchemy_session(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/from-env")
    assert database_url_of(None) == "postgresql://u@h/from-env"
    assert database_url_of("postgresql://u@h/db") == "postgresql://u@h/db"
    session = _Session("postgresql+psycopg2://u:secret@h:5433/db")
    assert database_url_of(session) == "postgresql://u:secret@h:5433/db"
    assert database_url_of(_Engine("postgresql://u@h/e")) == "postgresql://u@h/e"
    with pytest.raises(TypeError, match="cannot find a database in a int"):
        database_url_of(3)


def test_a_stored_point_reads_like_the_seeds():
    point = MetricPoint(step=7, epoch=0.5, timestamp=1.0, policy_loss=0.25, custom={"x": 1})
    m = StoredMetric("job-1", "src", 3, point)
    assert (m.step, m.loss, m.policy_loss, m.custom, m.job_uuid) == (
        7,
        0.25,
        0.25,
        {"x": 1},
        "job-1",
    )
    assert StoredMetric("j", "s", 0, MetricPoint(step=1, timestamp=1.0, loss=2.0)).loss == 2.0
    with pytest.raises(AttributeError):
        _ = m.no_such_field
    assert copy.copy(m) == m and pickle.loads(pickle.dumps(m)) == m


async def test_a_blocking_call_works_inside_a_running_loop():
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    # What a notebook cell does: a plain call while a loop runs in this thread.
    assert run_sync(answer()) == 42


def test_a_run_is_the_attempt_under_the_agent_and_the_process_outside_it():
    from posttrain.events.messages.metrics import reporter_source, run_key

    mine, also_mine = reporter_source(), reporter_source()
    assert mine != also_mine
    assert run_key(mine, None) == run_key(also_mine, None)  # one process: one run
    assert run_key(mine, None) != run_key("otherhost:4242:0123abcd", None)
    assert run_key(mine, 2) == run_key("file:x.jsonl", 2) == "attempt:2"
    assert run_key("file:x.jsonl", None) == run_key("trainer-a", None) == "other"
