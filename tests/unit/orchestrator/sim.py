"""A deterministic world for the pure core: a clock, agents, and the log the decisions write."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from posttrain.events import Envelope, Message, encode
from posttrain.events.messages import (
    RunStage,
    StageFailed,
    StageRejected,
    StageSpec,
    StageStarted,
    StageSucceeded,
    SubmitPipeline,
    TickClock,
)
from posttrain.events.views import ViewDecoder
from posttrain.orchestrator.core.decide import AgentView, Context, Decision, decide
from posttrain.orchestrator.core.state import PipelineState, fold
from posttrain.orchestrator.core.view import pipeline_view


@dataclass
class World:
    pipeline_id: str = "p1"
    now: float = 1_000.0
    agents: dict[str, AgentView] = field(
        default_factory=lambda: {"a1": AgentView("a1", gpus=8, free_gpus=8)}
    )
    log: list[Envelope[Any]] = field(default_factory=list)
    commands: list[Envelope[Any]] = field(default_factory=list)
    state: PipelineState = field(init=False)
    _n: int = 0

    def __post_init__(self) -> None:
        self.state = PipelineState(self.pipeline_id)

    def send(self, message: Message) -> Decision:
        self._n += 1
        envelope = Envelope(
            id=f"in-{self._n}",
            occurred_at=datetime.fromtimestamp(self.now, UTC),
            key=self.pipeline_id,
            data=message,
        )
        decision = decide(self.state, envelope, Context(agents=self.agents))
        self.log.extend(decision.events)
        self.commands.extend(c for _, c in decision.commands)
        return decision

    def submit(self, stages: list[dict[str, Any]] | list[StageSpec]) -> Decision:
        return self.send(
            SubmitPipeline(
                pipeline_id=self.pipeline_id,
                name="test",
                stages=[StageSpec.model_validate(s) for s in stages],
            )
        )

    def tick(self, advance: float = 0.0, silent: list[str] | None = None, **beat: Any) -> Decision:
        """Let time pass; agents that are alive heartbeat as it does (when ``advance`` > 0),
        with ``beat``'s changes to their views (e.g. ``free_slots``)."""
        self.now += advance
        if advance > 0:
            self.heartbeat(**beat)
        return self.send(
            TickClock(pipeline_id=self.pipeline_id, now=self.now, silent_agents=silent or [])
        )

    def heartbeat(self, **changes: Any) -> None:
        """Every live agent heartbeats now (with ``changes`` to its view, e.g. free_slots)."""
        self.agents = {
            name: replace(a, beat_at=self.now, **changes) if a.alive else a
            for name, a in self.agents.items()
        }

    def runs(self) -> list[RunStage]:
        return [c.data for c in self.commands if isinstance(c.data, RunStage)]

    def run_for(self, stage: str) -> RunStage:
        return [r for r in self.runs() if r.stage == stage][-1]

    def _report(self, run: RunStage) -> dict[str, Any]:
        return dict(
            pipeline_id=run.pipeline_id,
            stage=run.stage,
            attempt=run.attempt,
            command_id=run.command_id,
            agent_id=run.agent_id,
            job_id=run.job_id,
        )

    def start(self, stage: str) -> Decision:
        return self.send(StageStarted(**self._report(self.run_for(stage)), started_at=self.now))

    def succeed(self, stage: str, outputs: dict[str, Any] | None = None) -> Decision:
        run = self.run_for(stage)
        self.start(stage)
        self.now += 1
        outputs = outputs if outputs is not None else {"checkpoint": f"/ckpt/{run.command_id}"}
        return self.send(StageSucceeded(**self._report(run), finished_at=self.now, outputs=outputs))

    def fail(self, stage: str, kind: str = "error") -> Decision:
        run = self.run_for(stage)
        self.start(stage)
        self.now += 1
        return self.send(
            StageFailed(**self._report(run), finished_at=self.now, kind=kind, error="boom")
        )

    def reject(self, stage: str) -> Decision:
        return self.send(StageRejected(**self._report(self.run_for(stage)), reason="full"))

    def status(self, stage: str | None = None) -> str:
        if stage is None:
            return self.state.status.value
        return self.state.stages[stage].status.value

    def replayed_view(self) -> dict[str, Any]:
        return pipeline_view(fold(self.log)[self.pipeline_id])

    def replayed_from_the_wire(self) -> PipelineState:
        """The state replay rebuilds: every event encoded, read back as views where it can be."""
        views = ViewDecoder()
        events = [views.decode(value, headers) for _, value, headers in map(encode, self.log)]
        return fold(events)[self.pipeline_id]

    def view(self) -> dict[str, Any]:
        return pipeline_view(self.state)
