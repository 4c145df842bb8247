"""Pipeline DAGs: validation that reports every problem at once, execution layers, readiness and
output references. One place for these rules: the gateway, the SDK and the orchestrator call it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from posttrain.events.messages import Resources, RetryPolicy, StageSpec
from posttrain.events.tasks import (
    COMMON_PARAMS,
    TASKS,
    param_errors,
    stage_config,
    suggestion,
    uses_verl,
)

# ${stage.checkpoint} or ${stage.outputs.<name>}
REFERENCE = re.compile(r"\$\{([A-Za-z0-9_\-]+)\.(checkpoint|outputs\.([A-Za-z0-9_\-]+))\}")
ANY_REFERENCE = re.compile(r"\$\{([^}]*)\}")


@dataclass(frozen=True, slots=True)
class DagError:
    """One problem with a pipeline, naming the stage and field a user has to fix."""

    stage: str | None
    field: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "field": self.field, "message": self.message}

    def __str__(self) -> str:
        where = f"stage {self.stage!r}, " if self.stage else ""
        return f"{where}field {self.field!r}: {self.message}"


class InvalidPipeline(ValueError):
    def __init__(self, errors: Sequence[DagError]) -> None:
        super().__init__("invalid pipeline:\n" + "\n".join(f"  - {e}" for e in errors))
        self.errors = list(errors)


@dataclass(frozen=True, slots=True)
class Reference:
    stage: str
    output: str  # "checkpoint" or the name after "outputs."


def references_in(value: Any) -> list[Reference]:
    """Every ``${stage.checkpoint}`` / ``${stage.outputs.name}`` inside a params value."""
    found: list[Reference] = []
    if isinstance(value, str):
        for match in REFERENCE.finditer(value):
            found.append(Reference(match.group(1), match.group(3) or "checkpoint"))
    elif isinstance(value, Mapping):
        for item in value.values():
            found.extend(references_in(item))
    elif isinstance(value, list | tuple):
        for item in value:
            found.extend(references_in(item))
    return found


def _malformed_references(value: Any, path: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if isinstance(value, str):
        for match in ANY_REFERENCE.finditer(value):
            if not REFERENCE.fullmatch(match.group(0)):
                out.append((path, match.group(0)))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            out.extend(_malformed_references(item, f"{path}.{key}"))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            out.extend(_malformed_references(item, f"{path}[{i}]"))
    return out


def parse_stages(
    raw: Iterable[Mapping[str, Any] | StageSpec],
) -> tuple[list[StageSpec], list[DagError]]:
    """Turn user dicts into StageSpecs, collecting shape errors with their stage and field."""
    specs: list[StageSpec] = []
    errors: list[DagError] = []
    for index, item in enumerate(raw):
        if isinstance(item, StageSpec):
            specs.append(item)
            continue
        name = item.get("name") if isinstance(item, Mapping) else None
        label = name if isinstance(name, str) and name else f"#{index}"
        if not isinstance(item, Mapping):
            errors.append(DagError(label, "(stage)", "a stage must be an object"))
            continue
        unknown = _unknown_keys(item)
        if unknown:
            errors.extend(DagError(label, key, why) for key, why in unknown)
            continue
        try:
            specs.append(StageSpec.model_validate(item))
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or "(stage)"
                errors.append(DagError(label, field, err["msg"]))
    return specs, errors


def _unknown_keys(stage: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, message) for every key of a stage, its retries or its resources that no one
    reads: a misspelt option must never be accepted and silently ignored."""
    found: list[tuple[str, str]] = []
    for path, value, model in (
        ("", stage, StageSpec),
        ("retries.", stage.get("retries"), RetryPolicy),
        ("resources.", stage.get("resources"), Resources),
    ):
        if not isinstance(value, Mapping):
            continue  # the model says what is wrong with its type
        known = model.model_fields
        for key in value:
            if key not in known:
                found.append((f"{path}{key}", _unknown(str(key), known)))
    return found


def _unknown(key: str, known: Iterable[str]) -> str:
    return f"unknown key {key!r}{suggestion(key, known)}; known: {', '.join(sorted(known))}"


def _param_errors(spec: StageSpec) -> list[DagError]:
    """Params the task does not read, and values of them that no agent can act on yet."""
    task = TASKS[spec.task]
    known = task.params | COMMON_PARAMS
    errors: list[DagError] = []
    nested = spec.params.get("config")
    for prefix, params in (("params", spec.params), ("params.config", nested)):
        if not isinstance(params, Mapping):
            continue
        for key in params:
            if key not in known or (prefix == "params.config" and key in COMMON_PARAMS):
                errors.append(
                    DagError(spec.name, f"{prefix}.{key}", _unknown(str(key), task.params))
                )
    return errors


def _ssh_errors(
    spec: StageSpec, config: Mapping[str, Any], prefix: str, run_mode: Any
) -> list[DagError]:
    """ssh_config goes with run_mode ssh (its fields are checked by the task's model)."""
    where = f"{prefix}.ssh_config"
    if run_mode != "ssh" and "ssh_config" in config:
        return [DagError(spec.name, where, "read only by a stage with run_mode: ssh")]
    if run_mode == "ssh" and not isinstance(config.get("ssh_config"), Mapping):
        return [DagError(spec.name, where, "run_mode ssh needs ssh_config")]
    return []


def _train_errors(spec: StageSpec, config: Mapping[str, Any], prefix: str) -> list[DagError]:
    """What a train_model stage's params say together (each field alone is its model's)."""
    errors = _rank_errors(spec, config, prefix)
    errors.extend(_ssh_errors(spec, config, prefix, config.get("run_mode", "local")))
    backend = config.get("backend")
    if config.get("algorithm") == "ppo" and backend == "trl":
        errors.append(
            DagError(
                spec.name,
                f"{prefix}.backend",
                f"must be 'trl' or 'verl' (ppo runs on verl only), got {backend!r}",
            )
        )
    elif not uses_verl(config):
        errors.extend(
            DagError(spec.name, f"{prefix}.{name}", "read only by a stage on verl (backend: verl)")
            for name in ("verl_command", "verl_overrides")
            if name in config
        )
    elif spec.resources.gpus < 1:
        errors.append(
            DagError(
                spec.name,
                "resources.gpus",
                "a stage on verl needs at least 1 GPU (verl's trainer.n_gpus_per_node)",
            )
        )
    return errors


def _task_errors(spec: StageSpec) -> list[DagError]:
    errors: list[DagError] = []
    if spec.task not in TASKS:
        errors.append(
            DagError(
                spec.name,
                "task",
                f"unknown task {spec.task!r}{suggestion(spec.task, TASKS)}; "
                f"known: {', '.join(sorted(TASKS))}",
            )
        )
        return errors
    errors.extend(_param_errors(spec))
    config = stage_config(spec.params)
    prefix = "params.config" if isinstance(spec.params.get("config"), Mapping) else "params"
    errors.extend(
        DagError(spec.name, f"{prefix}.{name}", message)
        for name, message in param_errors(spec.task, spec.params)
    )
    if spec.task == "train_model":
        reported = {e.field for e in errors}
        errors.extend(e for e in _train_errors(spec, config, prefix) if e.field not in reported)
    if spec.retries.max_attempts < 1:
        errors.append(DagError(spec.name, "retries.max_attempts", "must be at least 1"))
    if spec.retries.backoff_s < 0:
        errors.append(DagError(spec.name, "retries.backoff_s", "must not be negative"))
    if spec.timeout_s is not None and spec.timeout_s <= 0:
        errors.append(DagError(spec.name, "timeout_s", "must be positive"))
    if spec.resources.gpus < 0:
        errors.append(DagError(spec.name, "resources.gpus", "must not be negative"))
    return errors


def _rank_errors(spec: StageSpec, config: Mapping[str, Any], prefix: str) -> list[DagError]:
    """``nproc_per_node`` (the ranks of a training stage; one per GPU where it has GPUs; its
    model checks it is a positive integer) names one rank per GPU where the stage asks for
    several."""
    if "nproc_per_node" not in config:
        return []
    value = config["nproc_per_node"]
    field = f"{prefix}.nproc_per_node"
    gpus = spec.resources.gpus
    if gpus > 1 and value != gpus:
        return [
            DagError(
                spec.name,
                field,
                f"{value} ranks on resources.gpus {gpus}: a GPU stage runs one rank per GPU "
                "(leave nproc_per_node out)",
            )
        ]
    return []


def find_cycle(deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle as a path ``[a, b, ..., a]``, or None. Iterative DFS (pipelines can be deep)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(deps, WHITE)
    # Each node's known dependencies, once (the walk looks at them once per child).
    edges = {node: [d for d in ds if d in deps] for node, ds in deps.items()}
    for root in sorted(deps):
        if colour[root] != WHITE:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        colour[root] = GREY
        while stack:
            node, i = stack[-1]
            children = edges[node]
            if i < len(children):
                stack[-1] = (node, i + 1)
                child = children[i]
                if colour[child] == GREY:
                    return [*path[path.index(child) :], child]
                if colour[child] == WHITE:
                    colour[child] = GREY
                    stack.append((child, 0))
                    path.append(child)
            else:
                colour[node] = BLACK
                stack.pop()
                path.pop()
    return None


def ancestors(deps: Mapping[str, Sequence[str]], stage: str) -> set[str]:
    seen: set[str] = set()
    todo = [d for d in deps.get(stage, ()) if d in deps]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(d for d in deps.get(node, ()) if d in deps)
    return seen


def validate(
    raw: Iterable[Mapping[str, Any] | StageSpec],
) -> tuple[list[StageSpec], list[DagError]]:
    """Check a whole pipeline and return its stages with EVERY problem found (empty if valid)."""
    specs, errors = parse_stages(raw)
    if not specs and not errors:
        return specs, [DagError(None, "stages", "a pipeline needs at least one stage")]
    names: dict[str, StageSpec] = {}
    for spec in specs:
        if not spec.name.strip():
            errors.append(DagError(spec.name, "name", "a stage needs a non-empty name"))
        if spec.name in names:
            errors.append(DagError(spec.name, "name", f"duplicate stage name {spec.name!r}"))
        names.setdefault(spec.name, spec)
        errors.extend(_task_errors(spec))
    deps = {name: list(spec.depends_on) for name, spec in names.items()}
    for name, spec in names.items():
        for dep in spec.depends_on:
            if dep == name:
                errors.append(DagError(name, "depends_on", f"stage {name!r} depends on itself"))
            elif dep not in names:
                errors.append(DagError(name, "depends_on", f"unknown dependency {dep!r}"))
    acyclic_deps = {n: [d for d in ds if d != n] for n, ds in deps.items()}
    cycle = find_cycle(acyclic_deps)
    if cycle:
        errors.append(DagError(cycle[0], "depends_on", "dependency cycle: " + " -> ".join(cycle)))
    for name, spec in names.items():
        for path, text in _malformed_references(spec.params, "params"):
            errors.append(
                DagError(
                    name,
                    path,
                    f"malformed reference {text}; use ${{stage.checkpoint}} "
                    "or ${stage.outputs.<name>}",
                )
            )
        if cycle:
            continue  # ancestry is meaningless in a cyclic graph
        upstream = ancestors(acyclic_deps, name)
        for ref in references_in(spec.params):
            if ref.stage not in upstream:
                why = "does not exist" if ref.stage not in names else "is not an ancestor"
                errors.append(
                    DagError(
                        name,
                        "params",
                        f"reference to {ref.stage!r} output {ref.output!r}: stage "
                        f"{ref.stage!r} {why} (add it to depends_on)",
                    )
                )
    return specs, errors


def execution_layers(specs: Sequence[StageSpec]) -> list[list[str]]:
    """Stages grouped by depth (longest path from a root), names sorted in each layer.

    For display and for the seed's API; scheduling itself is by readiness, not by layer."""
    deps = {s.name: list(s.depends_on) for s in specs}
    depth: dict[str, int] = {}
    order = topological_order(deps)
    for name in order:
        depth[name] = 1 + max((depth[d] for d in deps[name]), default=-1)
    layers: list[list[str]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
    for name in order:
        layers[depth[name]].append(name)
    return [sorted(layer) for layer in layers]


def topological_order(deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Kahn's algorithm, ties broken by name so the order is deterministic."""
    indegree = {n: len(ds) for n, ds in deps.items()}
    children: dict[str, list[str]] = {n: [] for n in deps}
    for n, ds in deps.items():
        for d in ds:
            children[d].append(n)
    ready = sorted(n for n, k in indegree.items() if k == 0)
    order: list[str] = []
    while ready:
        node = ready.pop(0)
        order.append(node)
        for child in sorted(children[node]):
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
        ready.sort()
    if len(order) != len(deps):
        raise InvalidPipeline([DagError(None, "depends_on", "the graph has a cycle")])
    return order


def descendants(specs: Sequence[StageSpec], stage: str) -> set[str]:
    children: dict[str, list[str]] = {s.name: [] for s in specs}
    for s in specs:
        for d in s.depends_on:
            children[d].append(s.name)
    seen: set[str] = set()
    todo = list(children.get(stage, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(children[node])
    return seen


def resolve_references(value: Any, outputs: Mapping[str, Mapping[str, Any]]) -> Any:
    """Replace references with the recorded outputs of earlier stages.

    A string that is exactly one reference becomes the output's value (any JSON type); a
    reference inside a longer string is substituted as text. Raises KeyError naming what's
    missing (the stage succeeded without that output)."""
    if isinstance(value, str):
        whole = REFERENCE.fullmatch(value)
        if whole:
            return _output(outputs, whole.group(1), whole.group(3) or "checkpoint")
        return REFERENCE.sub(
            lambda m: str(_output(outputs, m.group(1), m.group(3) or "checkpoint")), value
        )
    if isinstance(value, Mapping):
        return {k: resolve_references(v, outputs) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_references(v, outputs) for v in value]
    return value


def _output(outputs: Mapping[str, Mapping[str, Any]], stage: str, name: str) -> Any:
    recorded = outputs.get(stage)
    if recorded is None or name not in recorded:
        raise KeyError(f"stage {stage!r} recorded no output {name!r}")
    return recorded[name]


class DagResolver:
    """The seed's API: ``DagResolver(stages).validate()`` and ``.get_execution_layers()``."""

    def __init__(self, stages: Iterable[Mapping[str, Any] | StageSpec]) -> None:
        self.stages, self.errors = validate(list(stages))

    def validate(self) -> bool:
        """True if the pipeline is valid; otherwise raises InvalidPipeline listing every error."""
        if self.errors:
            raise InvalidPipeline(self.errors)
        return True

    def get_execution_layers(self) -> list[list[str]]:
        self.validate()
        return execution_layers(self.stages)
