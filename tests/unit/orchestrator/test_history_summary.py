"""One line per pipeline event for its history: what a person reads in ``posttrain history``,
the history endpoint and the web page."""

from __future__ import annotations

from posttrain.events.messages import (
    MESSAGE_TYPES,
    ActionApplied,
    ActionRefused,
    ActionRequested,
    CommandRefused,
    PipelineFailed,
    PipelineSubmitted,
    StageDispatched,
    StageFailed,
    StageRetryScheduled,
    StageSpec,
    TickClock,
)
from posttrain.orchestrator.core.state import PIPELINE_EVENT_TYPES
from posttrain.orchestrator.core.view import HIDDEN_FROM_HISTORY, event_stage, event_summary

RUN = {"pipeline_id": "p", "stage": "sft", "attempt": 2, "command_id": "p:sft:2"}


def test_a_failure_reads_as_one_line_ending_with_the_tracebacks_last_line():
    failed = StageFailed(
        **RUN,
        agent_id="gpu-1",
        job_id="p.sft",
        finished_at=1.0,
        kind="oom",
        error="Traceback (most recent call last):\n  File x\ntorch.OutOfMemoryError: CUDA out\n",
    )
    assert event_summary(failed) == "sft attempt 2 failed (oom): torch.OutOfMemoryError: CUDA out"
    assert event_stage(failed) == ("sft", 2)


def test_decisions_retries_and_actions_say_what_happened_and_why():
    submitted = PipelineSubmitted(
        pipeline_id="p",
        name="demo",
        stages=[StageSpec(name="a", task="command"), StageSpec(name="b", task="command")],
        layers=[["a"], ["b"]],
        submitted_by="alice",
    )
    assert event_summary(submitted) == "submitted 'demo': 2 stages in 2 layers by alice"
    assert event_stage(submitted) == (None, None)
    dispatched = StageDispatched(
        **RUN, agent_id="gpu-1", job_id="p.sft", task="train_model", params={}
    )
    assert event_summary(dispatched) == "sft attempt 2 sent to gpu-1 (job p.sft)"
    retry = StageRetryScheduled(pipeline_id="p", stage="sft", next_attempt=3, not_before=0.0)
    assert event_summary(retry) == "sft will retry as attempt 3 from 1970-01-01 00:00:00 UTC"
    assert event_stage(retry) == ("sft", 3)
    requested = ActionRequested(
        action_id="x1",
        pipeline_id="p",
        stage="sft",
        attempt=2,
        action="adjust_learning_rate",
        factor=0.1,
        anomaly_id="an-7",
        step=45,
        reason="grad_norm spike",
    )
    assert event_summary(requested) == (
        "adjust_learning_rate (x0.1) requested for sft attempt 2 on anomaly an-7 at step 45: "
        "grad_norm spike"
    )
    refused = ActionRefused(
        action_id="x2", pipeline_id="p", stage="sft", attempt=2, action="pause", reason="done"
    )
    assert event_summary(refused) == "pause for sft attempt 2 refused: done"
    applied = ActionApplied(
        **RUN, agent_id="gpu-1", job_id="p.sft", action_id="x1", action="pause", step=46
    )
    assert event_summary(applied) == "pause applied to sft attempt 2 at step 46"
    command = CommandRefused(
        pipeline_id="p", command="RetryStage", command_id="c", reason="it did not fail", stage="a"
    )
    assert event_summary(command) == "RetryStage of a refused: it did not fail"
    assert event_summary(PipelineFailed(pipeline_id="p", failed_stages=["b"])) == (
        "pipeline failed (b failed)"
    )


def test_every_pipeline_event_type_has_a_summary_of_its_own_and_ticks_are_hidden():
    described = set()
    for name in PIPELINE_EVENT_TYPES - HIDDEN_FROM_HISTORY:
        cls = MESSAGE_TYPES[name]
        fields = {
            key: _example(info.annotation)
            for key, info in cls.model_fields.items()
            if info.is_required()
        }
        summary = event_summary(cls.model_validate(fields))
        assert "\n" not in summary and summary
        if summary != name:
            described.add(name)
    assert described == PIPELINE_EVENT_TYPES - HIDDEN_FROM_HISTORY
    assert "TickClock" in HIDDEN_FROM_HISTORY
    assert event_summary(TickClock(pipeline_id="p", now=1.0)) == "clock tick"


def _example(annotation):
    text = str(annotation)
    if annotation is int:
        return 1
    if annotation is float:
        return 1.0
    if annotation is str:
        return "x"
    if annotation is bool:
        return False
    if "StageSpec" in text:
        return [{"name": "a", "task": "command"}]
    if "list" in text:
        return []
    if "dict" in text:
        return {}
    if "Literal" in text:
        return annotation.__args__[0]
    return "x"
