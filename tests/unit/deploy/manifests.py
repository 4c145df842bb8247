"""The deployment files as data: the Kubernetes manifests, the compose file and the Dockerfile,
and what the code declares that they must agree with (commands, environment variables, ports).

The tests in this folder read both sides here, so that a check compares a file with the code's
own source of truth rather than with a copy kept in the test.
"""

from __future__ import annotations

import ast
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

# The code that the services run: every package but the tests.
SOURCE_DIRS = (ROOT / "libs", ROOT / "services", ROOT / "src")

_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+_?$")


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    """Every document of every YAML file under deploy/k8s, with its file."""
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        with path.open(encoding="utf-8") as f:
            found += [(path, doc) for doc in yaml.safe_load_all(f) if doc is not None]
    return found


def k8s_resources(kind: str | None = None) -> list[dict[str, Any]]:
    """The Kubernetes resources (everything but the kustomization), of one kind if given."""
    return [
        doc
        for _, doc in k8s_documents()
        if doc.get("kind") != "Kustomization" and (kind is None or doc["kind"] == kind)
    ]


def compose() -> dict[str, Any]:
    with COMPOSE.open(encoding="utf-8") as f:
        loaded: dict[str, Any] = yaml.safe_load(f)
    return loaded


@dataclass(frozen=True)
class Container:
    """A container that runs a posttrain command, wherever it is declared."""

    where: str  # "Deployment/posttrain-gateway", "compose/gateway"
    command: list[str]
    env: dict[str, str | None]  # name -> literal value (None: from a secret or field)
    ports: list[int]  # the ports it declares (containerPort)
    probes: list[tuple[str, int]]  # (path, port) of each HTTP probe or healthcheck

    def option(self, name: str) -> str | None:
        """The value after ``name`` on the command line (``--http 0.0.0.0:9465`` -> the address)."""
        for i, word in enumerate(self.command[:-1]):
            if word == name:
                return self.command[i + 1]
        return None

    def options(self) -> list[str]:
        return [word for word in self.command if word.startswith("--")]


def _config_maps() -> dict[str, dict[str, str]]:
    return {doc["metadata"]["name"]: doc.get("data", {}) for doc in k8s_resources("ConfigMap")}


def k8s_containers() -> list[Container]:
    """Every container of a Deployment, StatefulSet or Job that runs a posttrain image."""
    maps = _config_maps()
    found = []
    for doc in k8s_resources():
        if doc["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        for spec in doc["spec"]["template"]["spec"]["containers"]:
            if not spec["image"].startswith("posttrain"):
                continue
            env: dict[str, str | None] = {}
            for source in spec.get("envFrom", []):
                env.update(maps[source["configMapRef"]["name"]])
            for var in spec.get("env", []):
                env[var["name"]] = var.get("value")
            probes = [
                (spec[probe]["httpGet"]["path"], spec[probe]["httpGet"]["port"])
                for probe in ("startupProbe", "readinessProbe", "livenessProbe")
                if probe in spec
            ]
            found.append(
                Container(
                    where=f"{doc['kind']}/{doc['metadata']['name']}",
                    command=list(spec["command"]) + list(spec.get("args", [])),
                    env=env,
                    ports=[p["containerPort"] for p in spec.get("ports", [])],
                    probes=probes,
                )
            )
    return found


_HEALTHCHECK_URL = re.compile(r"http://127\.0\.0\.1:(\d+)(/\S*?)['\"]")


def compose_containers() -> list[Container]:
    """Every compose service built from the posttrain image."""
    found = []
    for name, service in compose()["services"].items():
        if not str(service.get("image", "")).startswith("posttrain"):
            continue
        probes = []
        check = service.get("healthcheck")
        if check is not None:
            probes = [(path, int(port)) for port, path in _HEALTHCHECK_URL.findall(str(check))]
        found.append(
            Container(
                where=f"compose/{name}",
                command=list(service["command"]),
                env={k: None if v is None else str(v) for k, v in service["environment"].items()},
                ports=[],
                probes=probes,
            )
        )
    return found


def entry_point_target(command: list[str]) -> str | None:
    """What a command line runs: the entry point's ``module:function``, found the way the shell
    and the ``posttrain`` command line find it (console scripts, then ``posttrain.commands``)."""
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    if command[0] == "posttrain" and len(command) > 1:
        commands = {ep.name: ep.value for ep in entry_points(group="posttrain.commands")}
        return commands.get(command[1])
    return scripts.get(command[0])


def service_targets() -> set[str]:
    """The services to deploy: every console script of a service distribution (``posttrain-*``)
    and the orchestrator, which the root command line starts (``posttrain orchestrator``)."""
    targets = {
        ep.value
        for ep in entry_points(group="console_scripts")
        if ep.name.startswith("posttrain-") and ep.value.startswith("posttrain.")
    }
    commands = {ep.name: ep.value for ep in entry_points(group="posttrain.commands")}
    return targets | {commands["orchestrator"]}


def _settings_env_names(tree: ast.AST) -> Iterator[tuple[str, str]]:
    """``(env_prefix, <env_prefix><FIELD>)`` of each pydantic-settings class with a prefix."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        prefix = None
        for item in node.body:
            if (
                isinstance(item, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "model_config" for t in item.targets)
                and isinstance(item.value, ast.Call)
            ):
                for keyword in item.value.keywords:
                    if keyword.arg == "env_prefix" and isinstance(keyword.value, ast.Constant):
                        prefix = str(keyword.value.value)
        if prefix is None:
            continue
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                yield prefix, f"{prefix}{item.target.id}".upper()


@cache
def env_names_read_by_code() -> frozenset[str]:
    """Every environment variable name the services' code spells: string constants shaped like
    one (``os.environ.get("KAFKA_BOOTSTRAP_SERVERS")``, ``AliasChoices("DATABASE_URL")``, typer's
    ``envvar=``), and the names pydantic-settings derives from an ``env_prefix`` and a field."""
    names: set[str] = set()
    prefixes: set[str] = set()
    for top in SOURCE_DIRS:
        for path in top.rglob("*.py"):
            if "tests" in path.parts:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and _ENV_NAME.match(node.value)
                ):
                    names.add(node.value)
            for prefix, name in _settings_env_names(tree):
                prefixes.add(prefix)
                names.add(name)
    # A name ending in "_" is a prefix the code reads any name under (POSTTRAIN_SECRET_<NAME>);
    # a settings class's prefix is not: only its fields' names are read.
    return frozenset(names - prefixes)


def env_name_is_read(name: str, read: frozenset[str]) -> bool:
    return name in read or any(p.endswith("_") and name.startswith(p) for p in read)


def port_of(address: str) -> int:
    """The port of ``host:port``."""
    return int(address.rpartition(":")[2])


def makefile_members() -> set[str]:
    """The workspace members ``make install`` installs (its MEMBERS line), as paths."""
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    block = re.search(r"^MEMBERS := (.*?)(?:\n\n|\n[A-Z.])", text, re.S | re.M)
    assert block is not None, "the Makefile has no MEMBERS"
    words = shlex.split(block.group(1).replace("\\\n", " "))
    return {w.split("[")[0] for w in words if w != "-e"}


def dockerfile_members() -> set[str]:
    """The paths the Dockerfile installs (its ``ARG MEMBERS`` default)."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    match = re.search(r'^ARG MEMBERS="([^"]*)"', text, re.M)
    assert match is not None, "the Dockerfile has no ARG MEMBERS"
    return set(match.group(1).split())
