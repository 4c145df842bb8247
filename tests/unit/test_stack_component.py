"""A stack component refuses to start on an address that is not free for it, saying why and
which variable to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.stack.component import ComponentStatus, StackError, State, check_not_taken


def _status(state: State, serving_at: str | None = None) -> ComponentStatus:
    return ComponentStatus(
        "kafka", state, "127.0.0.1:9092", 42, Path("/d"), Path("/l"), serving_at=serving_at
    )


def test_a_port_taken_by_another_process_names_the_variable_to_change() -> None:
    with pytest.raises(StackError) as caught:
        check_not_taken(_status(State.FOREIGN), server="broker", variable="KAFKA_BOOTSTRAP_SERVERS")
    assert caught.value.component == "kafka"
    assert caught.value.message == (
        "port 127.0.0.1:9092 is in use by a process that `posttrain stack up` did not start; "
        "stop it or point KAFKA_BOOTSTRAP_SERVERS at a free port"
    )


def test_ours_serving_elsewhere_says_where_and_what_to_run() -> None:
    with pytest.raises(StackError) as caught:
        check_not_taken(
            _status(State.ELSEWHERE, "127.0.0.1:9192"), server="broker", variable="X_URL"
        )
    assert caught.value.message == (
        "our broker (pid 42) serves 127.0.0.1:9192, but X_URL asks for 127.0.0.1:9092; "
        "run `posttrain stack down` first"
    )


@pytest.mark.parametrize("state", [State.STOPPED, State.STARTING, State.RUNNING])
def test_other_states_are_not_refused(state: State) -> None:
    check_not_taken(_status(state), server="broker", variable="X_URL")  # raises nothing
