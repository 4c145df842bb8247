"""Playing a recorded agent history through the pure core (``core.decide``, ``core.state``).

A history is JSONL, one step a line:

- ``{"observe": "<Observation type>", ...fields}``: what the shell saw (a RunStage or control
  command as the message's JSON under ``command`` with its ``type``, a look at a stage, a
  restart), with the time ``now``; the decision is recorded and its journal events applied.
- ``{"journal": {...}}``: a journal line the shell writes itself (``launched`` after a start,
  ``events_published`` after a relay), in the on-disk format (old, unversioned lines included).

Playing gives every decision (its name and actions, as JSON) and the final journal state.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from posttrain.events.messages import MESSAGE_TYPES
from posttrain.trainer_agent.core.decide import (
    Action,
    ControlReceived,
    LaunchFailed,
    Looked,
    Observation,
    Record,
    Restarted,
    RunReceived,
    Send,
    Setup,
    SignalStage,
    Start,
    WriteControl,
    decide,
)
from posttrain.trainer_agent.core.events import from_record, kind_of
from posttrain.trainer_agent.core.state import Entry, fold

HERE = Path(__file__).parent
SETUP = Setup("golden-agent", "/work", gpus=2, labels=frozenset({"a100"}), slots=2)


def observation(step: Mapping[str, Any]) -> Observation:
    kind = step["observe"]
    if kind in ("RunReceived", "ControlReceived"):
        command = step["command"]
        message = MESSAGE_TYPES[command["type"]].model_validate(command["data"])
        cls = RunReceived if kind == "RunReceived" else ControlReceived
        return cls(message, float(step["now"]))  # type: ignore[arg-type]
    fields = {k: v for k, v in step.items() if k != "observe"}
    types: dict[str, Any] = {"Looked": Looked, "LaunchFailed": LaunchFailed, "Restarted": Restarted}
    return types[kind](**fields)  # type: ignore[no-any-return]


def action_json(action: Action) -> dict[str, Any]:
    if isinstance(action, Record):
        return {"record": kind_of(action.event), **dataclasses.asdict(action.event)}
    if isinstance(action, Send):
        return {"send": action.message.TYPE, **action.message.model_dump(mode="json")}
    if isinstance(action, Start):
        started = action.started.model_dump(mode="json") if action.started else None
        fields = {f.name: getattr(action, f.name) for f in dataclasses.fields(action)}
        return {"start": action.number, **fields, "started": started}
    if isinstance(action, SignalStage):
        return {"signal": action.signal, "command_id": action.command_id}
    assert isinstance(action, WriteControl)
    # The command's own fields, as the histories were recorded (its routing fields are those
    # of the observed command, which the history already holds).
    control = action.command
    line = control.model_dump(mode="json", exclude=_ROUTING)
    return {"control": {"type": control.TYPE, **line}, "command_id": action.command_id}


_ROUTING = frozenset({"agent_id", "run_command_id", "pipeline_id", "stage", "attempt"})


def entry_json(entry: Entry) -> dict[str, Any]:
    return dataclasses.asdict(entry)


def play(lines: Iterable[str], setup: Setup = SETUP) -> dict[str, Any]:
    entries: dict[str, Entry] = {}
    decisions: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        step = json.loads(line)
        if "journal" in step:
            event = from_record(step["journal"])
            assert event is not None, f"line {number}: not a journal line"
            entries = fold([event], entries)
            continue
        decision = decide(entries, observation(step), setup)
        decisions.append(
            {
                "line": number,
                "decision": decision.name,
                "reason": decision.reason,
                "actions": [action_json(a) for a in decision.actions],
            }
        )
        entries = fold([a.event for a in decision.actions if isinstance(a, Record)], entries)
    state = {c: entry_json(e) for c, e in sorted(entries.items())}
    # Through JSON, as the expected file is read (tuples become lists).
    return json.loads(json.dumps({"decisions": decisions, "state": state}))


def play_file(name: str) -> dict[str, Any]:
    return play((HERE / f"{name}.jsonl").read_text().splitlines())


def record(names: Iterable[str]) -> None:
    """``python -m tests.unit.trainer_agent.golden.play NAME...``: write NAME.expected.json.
    Once committed these are history: a change to the core must still play them to the same
    decisions and state, never regenerate them to make a test pass."""
    for name in names:
        out = HERE / f"{name}.expected.json"
        out.write_text(json.dumps(play_file(name), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    import sys

    record(sys.argv[1:])
