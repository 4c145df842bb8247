"""Detection quality of the detector library on the labelled corpus of real tiny runs.

Every series of ``bench/data/detect_corpus`` (``bench.detect_corpus``; recorded by
``bench.record_detect_corpus``) is folded, point by point, through a fresh ``JobState`` with the
shipped default configuration: the code the diagnostics stream runs. Each anomaly goes through
the default action policy (``core.policy.decide``, as the stream calls it, with a fresh policy
state per job). Scoring:

- an anomaly is *true* when it is raised on a faulty series at or after the step of a fault
  whose kind the rule names (``detect_corpus.FAULT_RULES``), and *false* when it is raised on a
  healthy series or before a faulty series' first fault. One raised after a fault by a rule that
  names none of the series' faults (a KL rule firing on the wreck of a diverged run) is a
  *consequence*, counted apart. ``new_best_reward`` is not a fault detector (its checkpoints are
  wanted on healthy runs) and is reported apart;
- per rule: precision = true / (true + false) over anomalies; recall = faults the rule caught /
  faults of the kinds that expect it (a fault counts once, whatever the number of anomalies);
- per fault kind: the faults caught by any rule that names them, and how many steps after the
  fault's start the first such anomaly came;
- ``recall_on_faults``: the faulty series whose every fault was caught by a rule that names it,
  at or after its step (within a few steps of a transient fault's end), over all faulty series
  (goal 1.0);
- ``false_actions_on_healthy``: anomalies on healthy series that the default policy turns into
  an automatic action other than new-best-reward's checkpoint (goal 0). Actions on faulty
  series before the fault are printed as ``false_actions_before_fault``.

    python -m bench.detect_quality [--verbose]

No broker or database: the figures are a pure function of the corpus and the configuration,
so two runs print the same.
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from bench.detect_corpus import CORPUS_DIR, FAULT_RULES, Series, load
from posttrain.diagnostics.core import AnomalyType, JobState
from posttrain.diagnostics.core.anomaly import Anomaly
from posttrain.diagnostics.core.config import ActionPolicyConfig, DetectorConfig
from posttrain.diagnostics.core.messages import anomaly_detected
from posttrain.diagnostics.core.policy import PolicyState, decide
from posttrain.service.commands import command_app, run_app

NOT_A_FAULT = frozenset({AnomalyType.NEW_BEST_REWARD})


@dataclass(frozen=True, slots=True)
class Raised:
    anomaly: Anomaly
    action: str | None  # what the default policy asks for, if anything
    verdict: str  # true | false | consequence | info


def judge(series: Series, anomaly: Anomaly) -> str:
    kind = anomaly.anomaly_type
    if kind in NOT_A_FAULT:
        return "info"
    step = anomaly.step
    ongoing = [f for f in series.faults if f.covers(step)]
    if not ongoing:
        return "false"  # a healthy run, before the fault, or long after a transient one
    if any(kind in FAULT_RULES[f.kind].naming for f in ongoing):
        return "true"
    return "consequence"


def run_series(series: Series, config: DetectorConfig, policy: ActionPolicyConfig) -> list[Raised]:
    """The stream's fold over one series, with the policy's decision on each anomaly."""
    state = JobState(config)
    policy_state = PolicyState()
    job_id = f"corpus/{series.name}"
    out = []
    for point in series.points:
        for anomaly in state.observe(point):
            event = anomaly_detected(
                job_id, anomaly, pipeline_id="corpus", stage=series.name, attempt=1
            )
            decision = decide(event, policy, policy_state)
            action = None if decision is None else decision.action
            out.append(Raised(anomaly, action, judge(series, anomaly)))
    return out


@dataclass
class Report:
    """What ``score`` finds; ``lines`` is the table ``main`` prints."""

    series: int = 0
    faulty: int = 0
    recall_on_faults: float = 1.0
    false_actions_on_healthy: list[str] = field(default_factory=list)
    false_actions_before_fault: list[str] = field(default_factory=list)
    checkpoints_on_healthy: int = 0
    missed: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def score(
    corpus: list[Series],
    config: DetectorConfig | None = None,
    policy: ActionPolicyConfig | None = None,
    *,
    verbose: bool = False,
) -> Report:
    """Score the rules and the policy (the shipped defaults unless given) on ``corpus``."""
    config = config or DetectorConfig()
    policy = policy or ActionPolicyConfig()
    report = Report(series=len(corpus), faulty=sum(1 for s in corpus if not s.healthy))
    out = report.lines
    by_algorithm = Counter(s.algorithm for s in corpus)
    out.append(
        f"corpus: {len(corpus)} series ({len(corpus) - report.faulty} healthy, "
        f"{report.faulty} faulty; "
        + ", ".join(f"{a} {n}" for a, n in sorted(by_algorithm.items()))
        + f"), {sum(len(s.points) for s in corpus)} points"
    )
    true: Counter[str] = Counter()
    false: Counter[str] = Counter()
    consequences: Counter[str] = Counter()
    caught: Counter[str] = Counter()  # rule -> faults it caught, of the kinds that expect it
    expected: Counter[str] = Counter()  # rule -> faults of the kinds that expect it
    kind_total: Counter[str] = Counter()
    kind_caught: Counter[str] = Counter()
    delays: dict[str, list[int]] = defaultdict(list)
    series_ok = 0

    for series in corpus:
        raised = run_series(series, config, policy)
        for r in raised:
            rule = r.anomaly.anomaly_type.value
            tally = {"true": true, "false": false, "consequence": consequences}.get(r.verdict)
            if tally is not None:
                tally[rule] += 1
            where = f"{series.name}: {rule} at step {r.anomaly.step} -> {r.action or 'alert'}"
            if r.action is not None and r.verdict == "false":
                if series.healthy:
                    report.false_actions_on_healthy.append(where)
                else:
                    report.false_actions_before_fault.append(where)
            if r.action is not None and r.verdict == "info" and series.healthy:
                report.checkpoints_on_healthy += 1
            if verbose:
                out.append(f"  {where} [{r.verdict}] {r.anomaly.message}")
        all_found = True
        for fault in series.faults:
            rules = FAULT_RULES[fault.kind]
            kind_total[fault.kind] += 1
            hits = [
                r.anomaly
                for r in raised
                if r.anomaly.anomaly_type in rules.naming and fault.covers(r.anomaly.step)
            ]
            for rule_type in rules.expected:
                expected[rule_type.value] += 1
                if any(a.anomaly_type == rule_type for a in hits):
                    caught[rule_type.value] += 1
            if hits:
                kind_caught[fault.kind] += 1
                delays[fault.kind].append(min(a.step for a in hits) - fault.step)
            else:
                all_found = False
                report.missed.append(f"{fault.kind} in {series.name} (from step {fault.step})")
        if series.faults and all_found:
            series_ok += 1
    report.recall_on_faults = series_ok / report.faulty if report.faulty else 1.0

    out.append(
        f"{'rule':18} {'true':>5} {'false':>6} {'conseq':>7} {'precision':>10} "
        f"{'recall':>12}  (of the faults that expect the rule)"
    )
    for anomaly_type in AnomalyType:
        rule = anomaly_type.value
        t, f, c, n = true[rule], false[rule], consequences[rule], expected[rule]
        if anomaly_type in NOT_A_FAULT or not (t or f or c or n):
            continue
        precision = f"{t / (t + f):.2f}" if t + f else "-"
        recall = f"{caught[rule]}/{n} {caught[rule] / n:.2f}" if n else "-"
        out.append(f"{rule:18} {t:5d} {f:6d} {c:7d} {precision:>10} {recall:>12}")
    out.append(
        f"{'fault kind':18} {'detected':>9}  first detection (steps after the fault, median)"
    )
    for kind in FAULT_RULES:
        if kind_total[kind]:
            delay = f"{statistics.median(delays[kind]):g}" if delays[kind] else "-"
            out.append(f"{kind:18} {kind_caught[kind]:4d}/{kind_total[kind]:<4d} {delay:>6}")
    out += [f"missed: {m}" for m in report.missed]
    out += [
        f"false action: {w}"
        for w in report.false_actions_on_healthy + report.false_actions_before_fault
    ]
    out.append(
        f"checkpoints_on_healthy: {report.checkpoints_on_healthy} "
        "(new best reward -> force_checkpoint: wanted, not false)"
    )
    out.append(f"false_actions_before_fault: {len(report.false_actions_before_fault)}")
    out.append(f"recall_on_faults: {report.recall_on_faults:.3f}")
    out.append(f"false_actions_on_healthy: {len(report.false_actions_on_healthy)}")
    return report


app = command_app()


@app.command()
def _bench(
    verbose: Annotated[bool, typer.Option("--verbose", help="list every anomaly")] = False,
    corpus: Annotated[Path, typer.Option(help="the corpus directory")] = CORPUS_DIR,
) -> None:
    """The detectors' scores on the labelled corpus."""
    series = load(corpus)
    if not series:
        raise SystemExit("no corpus: python -m bench.record_detect_corpus")
    print("\n".join(score(series, verbose=verbose).lines))


def main(argv: list[str] | None = None) -> int:
    return run_app(app, argv, "python -m bench.detect_quality")


if __name__ == "__main__":
    sys.exit(main())
