"""What every stack component reports about itself, and how it fails."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class State(StrEnum):
    RUNNING = "running"
    # Our process is alive but its port does not answer yet (or any more).
    STARTING = "starting"
    STOPPED = "stopped"
    # The port answers, but not from a process `posttrain stack up` started.
    FOREIGN = "port-taken"
    # Ours is running, but at another address than the environment asks for now.
    ELSEWHERE = "running-elsewhere"


@dataclass(frozen=True, slots=True)
class ComponentStatus:
    name: str
    state: State
    address: str
    pid: int | None
    data_dir: Path
    log: Path
    # Where ours actually serves, when that is not ``address`` (state ELSEWHERE).
    serving_at: str | None = None

    def line(self) -> str:
        pid = str(self.pid) if self.pid is not None else "-"
        elsewhere = f" (ours serves {self.serving_at})" if self.serving_at else ""
        return (
            f"{self.name:<9} {self.state.value:<17} {self.address:<16} pid {pid:<8} "
            f"data {self.data_dir}  log {self.log}{elsewhere}"
        )


class StackError(Exception):
    """A component could not be brought to the wanted state; says which and where to look."""

    def __init__(self, component: str, message: str, log: Path | None = None) -> None:
        super().__init__(message)
        self.component = component
        self.message = message
        self.log = log


def check_not_taken(current: ComponentStatus, *, server: str, variable: str) -> None:
    """Refuse to start when ``current`` (not running) says the address is another process's, or
    ours (``server``: what it is, "broker") serves an address other than ``variable`` asks for."""
    if current.state is State.FOREIGN:
        raise StackError(
            current.name,
            f"port {current.address} is in use by a process that `posttrain stack up` did not "
            f"start; stop it or point {variable} at a free port",
        )
    if current.state is State.ELSEWHERE:
        raise StackError(
            current.name,
            f"our {server} (pid {current.pid}) serves {current.serving_at}, but {variable} asks "
            f"for {current.address}; run `posttrain stack down` first",
        )
