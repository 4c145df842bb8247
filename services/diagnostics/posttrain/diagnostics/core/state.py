"""One job's diagnostic state: every rule's windows plus what has been seen, as a fold over the
job's points. The stream keeps one per job in a changelog-backed table; the batch builds one from
the rows in PostgreSQL; both call ``observe`` in the same order and so raise the same anomalies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from posttrain.diagnostics.core.anomaly import Anomaly, oom_anomaly
from posttrain.diagnostics.core.config import DetectorConfig
from posttrain.diagnostics.core.detectors import Rule, Rules, build_rules
from posttrain.diagnostics.core.windows import JsonDict
from posttrain.events.messages.metrics import MetricPoint

STATE_VERSION = 1


class JobState:
    """Rolling state of one job.

    Idempotent under redelivery: a point identified by (source, seq) at or below the highest
    seq already folded from that source is ignored, so a restarted stream that reads a few
    messages again does not raise their anomalies again. A new point whose step is below the
    last step means the run went back (rollback, resume from a checkpoint): ``generation`` is
    bumped and every rule re-arms, so a second NaN after a resume is raised again.
    """

    def __init__(self, config: DetectorConfig, data: JsonDict | None = None) -> None:
        data = data or {}
        version = data.get("version", STATE_VERSION)
        if version != STATE_VERSION:
            raise ValueError(f"job state version {version} is not {STATE_VERSION}")
        self.config = config
        last_step = data.get("last_step")
        self.last_step: int | None = None if last_step is None else int(last_step)
        self.generation = int(data.get("generation", 0))
        self.last_seq: dict[str, int] = {k: int(v) for k, v in data.get("last_seq", {}).items()}
        self.points = int(data.get("points", 0))
        self.raised = int(data.get("raised", 0))
        self.failures: list[str] = list(data.get("failures", []))
        self.rules: list[Rule] = build_rules(config, data.get("rules", {}))
        # Bound once: it runs for every point.
        self._observe_rules = Rules(self.rules).observe

    def to_dict(self) -> JsonDict:
        return {
            "version": STATE_VERSION,
            "last_step": self.last_step,
            "generation": self.generation,
            "last_seq": dict(self.last_seq),
            "points": self.points,
            "raised": self.raised,
            "failures": list(self.failures),
            "rules": {rule.name: rule.to_dict() for rule in self.rules},
        }

    @classmethod
    def from_dict(cls, config: DetectorConfig, data: JsonDict) -> JobState:
        return cls(config, data)

    def seen(self, source: str | None, seq: int | None) -> bool:
        """Whether the point (source, seq) was already folded in."""
        if source is None or seq is None:
            return False
        last = self.last_seq.get(source)
        return last is not None and seq <= last

    def observe(
        self, point: MetricPoint, *, source: str | None = None, seq: int | None = None
    ) -> list[Anomaly]:
        """Fold one point in; the anomalies it raises."""
        if source is not None and seq is not None:
            last = self.last_seq.get(source)
            if last is not None and seq <= last:
                return []
            self.last_seq[source] = seq
        step = point.step
        if self.last_step is not None and step < self.last_step:
            self.generation += 1
            for rule in self.rules:
                rule.on_rewind()
        self.last_step = step
        self.points += 1
        out: list[Anomaly] = []
        self._observe_rules(point, out)
        if out:
            self.raised += len(out)
            generation = self.generation
            if generation:
                out = [dataclasses.replace(a, generation=generation) for a in out]
        return out

    def observe_many(
        self, points: Iterable[MetricPoint], *, source: str | None = None, first_seq: int = 0
    ) -> list[Anomaly]:
        """Fold a batch (as one MetricsReported carries it: seq ``first_seq + i``)."""
        out: list[Anomaly] = []
        for i, point in enumerate(points):
            out.extend(
                self.observe(point, source=source, seq=None if source is None else first_seq + i)
            )
        return out

    def observe_failure(
        self, kind: str, error: str, *, attempt_key: str, step: int | None = None
    ) -> list[Anomaly]:
        """A stage of this job failed. ``kind == "oom"`` is a GPU OOM anomaly, raised once per
        ``attempt_key`` (the failed command's id)."""
        if kind != "oom" or attempt_key in self.failures:
            return []
        self.failures = [*self.failures[-15:], attempt_key]
        at = step if step is not None else (self.last_step if self.last_step is not None else 0)
        anomaly = dataclasses.replace(oom_anomaly(error, step=at), generation=self.generation)
        self.raised += 1
        return [anomaly]


def diagnose_points(
    points: Iterable[MetricPoint],
    config: DetectorConfig | None = None,
    *,
    source: str | None = None,
    first_seq: int = 0,
) -> list[Anomaly]:
    """Every anomaly a fresh job state raises on ``points``, in order (the batch path)."""
    state = JobState(config or DetectorConfig())
    return state.observe_many(points, source=source, first_seq=first_seq)
