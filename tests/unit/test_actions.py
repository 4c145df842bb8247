"""One action vocabulary, handled end to end: every action the diagnostics policy can ask for
has an agent command (libs/events), a handler in the orchestrator (the command is sent) and one
in the agent (the control is applied, or handed to the training loop). A kind added to the
vocabulary without them fails here."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import get_args

import pytest

from posttrain.diagnostics.core.config import ActionKind as PolicyActionKind
from posttrain.diagnostics.core.config import ActionPolicyConfig
from posttrain.events import Envelope
from posttrain.events.actions import ACTION_COMMANDS, ALL_ACTIONS, COMMAND_ACTIONS, TASK_ACTIONS
from posttrain.events.messages import (
    ActionKind,
    RequestAction,
    StagePaused,
    StageSpec,
    StageStarted,
    SubmitPipeline,
)
from posttrain.orchestrator.core.dag import TASKS
from posttrain.orchestrator.core.decide import AgentView, Context, decide
from posttrain.orchestrator.core.state import PipelineState
from posttrain.trainer_agent.core.control import at_step_boundary
from posttrain.trainer_agent.core.decide import control_verdict
from posttrain.trainer_agent.core.events import from_record
from posttrain.trainer_agent.core.state import fold

POLICY_ACTIONS = sorted(
    set(get_args(PolicyActionKind))
    | {rule.action for rule in ActionPolicyConfig().rules.values() if rule is not None}
)


def test_the_policy_asks_only_for_actions_of_the_one_vocabulary():
    assert set(POLICY_ACTIONS) <= set(get_args(ActionKind)) == ALL_ACTIONS
    assert set(ACTION_COMMANDS) == ALL_ACTIONS
    assert {COMMAND_ACTIONS[cls.TYPE] for cls in ACTION_COMMANDS.values()} == ALL_ACTIONS
    assert set(TASK_ACTIONS) == set(TASKS)  # every task the DAG accepts says what it takes


def _send(state: PipelineState, message, n: int):
    envelope = Envelope(
        id=f"in-{n}", occurred_at=datetime.fromtimestamp(1000 + n, UTC), key="p", data=message
    )
    return decide(state, envelope, Context(agents={"a1": AgentView("a1", 1, 1)}))


def _running_train_stage(paused: bool) -> PipelineState:
    state = PipelineState("p")
    spec = StageSpec(
        name="t", task="train_model", params={"algorithm": "sft", "model_path": "tiny-llama"}
    )
    [(_, run)] = _send(state, SubmitPipeline(pipeline_id="p", name="n", stages=[spec]), 1).commands
    ids = {
        k: getattr(run.data, k)
        for k in ("pipeline_id", "stage", "attempt", "command_id", "agent_id", "job_id")
    }
    _send(state, StageStarted(**ids, started_at=1000.0), 2)
    if paused:
        _send(state, StagePaused(**ids, step=5, checkpoint="/c/5"), 3)
    return state


@pytest.mark.parametrize("action", POLICY_ACTIONS)
def test_the_orchestrator_sends_the_command_for_every_action(action):
    state = _running_train_stage(paused=action == "resume")
    request = RequestAction(
        action_id="a-1",
        pipeline_id="p",
        stage="t",
        attempt=1,
        action=action,
        factor=0.5,
        step=4,
        rollback_steps=2,
        skip_batches=1,
    )
    decision = _send(state, request, 9)
    assert [e.type for e in decision.events] == ["ActionRequested"], decision.events
    [(_, command)] = decision.commands
    assert type(command.data) is ACTION_COMMANDS[action]


@pytest.mark.parametrize("action", POLICY_ACTIONS)
def test_the_agent_applies_or_hands_on_every_action(action):
    records = [
        {"kind": "accepted", "command_id": "c", "run": {}, "attempt_dir": "/d"},
        {"kind": "launched", "command_id": "c", "pid": 1},
    ]
    if action == "resume":
        records.append({"kind": "paused", "command_id": "c", "step": 5, "checkpoint": "/c/5"})
    entry = fold(filter(None, map(from_record, records)))["c"]
    verdict, reason = control_verdict(entry, action)
    assert verdict in ("forward", "resume", "cancel_paused"), (verdict, reason)
    if verdict != "forward":
        return  # the agent itself relaunches (resume) or finishes (cancel) the stage
    line = {
        "type": ACTION_COMMANDS[action].TYPE,
        "action_id": "a-1",
        "factor": 0.5,
        "step": 4,
        "skip_batches": 1,
    }
    directive = at_step_boundary([line])
    assert not directive.refused
    handed = [a.action for a in directive.applied]
    if directive.rollback is not None:
        handed.append("rollback")
    assert handed == [action]
