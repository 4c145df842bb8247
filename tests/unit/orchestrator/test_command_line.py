"""The orchestrator's command line hands the projection's memory bound to the service, and
refuses a bound that could not hold a pipeline, naming the option."""

from __future__ import annotations

from typing import Any

import pytest

from posttrain.orchestrator.shell import main as orchestrator_main


@pytest.fixture
def served(monkeypatch) -> list[orchestrator_main.Options]:
    """What the command line would serve with, instead of serving (no broker is reached, no
    helper process started); each served with the helpers ``start_helpers`` gave it."""
    seen: list[orchestrator_main.Options] = []

    def start_helpers(options: orchestrator_main.Options) -> Any:
        return ("helpers for", options)

    async def serve(options: orchestrator_main.Options, helpers: Any = None) -> None:
        assert helpers == ("helpers for", options)
        seen.append(options)

    monkeypatch.setattr(orchestrator_main, "start_helpers", start_helpers)
    monkeypatch.setattr(orchestrator_main, "serve", serve)
    # Left as the test run set it up (the service would log JSON lines to stderr).
    monkeypatch.setattr(orchestrator_main, "configure_json_logging", lambda level: None)
    return seen


def test_the_projection_bound_reaches_the_service(served):
    assert orchestrator_main.main(["--projection-max-pipelines", "500", "--http", "off"]) == 0
    assert [o.projection_max_pipelines for o in served] == [500]


def test_without_the_option_the_projection_is_unbounded(served):
    assert orchestrator_main.main(["--http", "off"]) == 0
    assert [o.projection_max_pipelines for o in served] == [None]


def test_a_bound_below_one_is_refused_naming_the_option(served, capsys):
    assert orchestrator_main.main(["--projection-max-pipelines", "0"]) == 2
    assert "--projection-max-pipelines" in capsys.readouterr().err
    assert served == []


def test_the_replay_helper_options_reach_the_helpers(served):
    argv = ["--replay-processes", "2", "--replay-parallel-from", "5000", "--http", "off"]
    assert orchestrator_main.main(argv) == 0
    assert [(o.replay_processes, o.replay_parallel_from) for o in served] == [(2, 5000)]


def test_no_helpers_start_when_none_are_asked_for():
    options = orchestrator_main.Options(
        tick_interval=1.0,
        silence_intervals=3.0,
        session_timeout_ms=6000,
        replay_processes=0,
        replay_parallel_from=10_000,
        snapshots=None,
        projection=False,
        database_url="postgresql://unused",
        http=None,
    )
    assert orchestrator_main.start_helpers(options) is None
