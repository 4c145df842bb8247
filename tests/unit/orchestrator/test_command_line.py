"""The orchestrator's command line hands the projection's memory bound to the service, and
refuses a bound that could not hold a pipeline, naming the option."""

from __future__ import annotations

import pytest

from posttrain.orchestrator.shell import main as orchestrator_main


@pytest.fixture
def served(monkeypatch) -> list[orchestrator_main.Options]:
    """What the command line would serve with, instead of serving (no broker is reached)."""
    seen: list[orchestrator_main.Options] = []

    async def serve(options: orchestrator_main.Options) -> None:
        seen.append(options)

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
