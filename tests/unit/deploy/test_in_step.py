"""The deployment files stay in step with the code: every service is deployed, each command and
option exists, each environment variable is one the code reads, each port is the service's own
and probed on /healthz, the agents' GPUs are reserved, and the image installs every member."""

from __future__ import annotations

import inspect
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

# Faust's default bind address (its F_WEB_BIND variable, else every interface): the stream sets
# only web_host, the address it names in URLs, and leaves the bind to Faust.
from faust.types import _env as faust_env

from posttrain.diagnostics import recorder
from posttrain.gateway import main as gateway_main
from posttrain.metrics_ingest import settings as ingest_settings
from posttrain.orchestrator.shell import main as orchestrator_main
from posttrain.trainer_agent import cli as agent_cli
from tests.unit.deploy.manifests import (
    COMPOSE,
    DOCKERFILE,
    ROOT,
    Container,
    compose,
    compose_containers,
    dockerfile_members,
    entry_point_target,
    env_name_is_read,
    env_names_read_by_code,
    k8s_containers,
    k8s_resources,
    makefile_members,
    port_of,
    service_targets,
)

# Each service's default port, read from its code; the diagnostics stream has none (it serves
# only on the port it is given).
DEFAULT_PORTS: dict[str, int | None] = {
    "posttrain.orchestrator.shell.main:main": port_of(orchestrator_main.DEFAULT_HTTP),
    "posttrain.metrics_ingest.__main__:main": port_of(ingest_settings.DEFAULT_HTTP),
    "posttrain.diagnostics.recorder:main": port_of(recorder.DEFAULT_HTTP),
    "posttrain.gateway.main:main": gateway_main.DEFAULT_PORT,
    "posttrain.trainer_agent.cli:main": inspect.signature(agent_cli.run)
    .parameters["http_port"]
    .default,
    "posttrain.diagnostics.stream:main": None,
}

ALL = k8s_containers() + compose_containers()
SERVICES = [c for c in ALL if entry_point_target(c.command) is not None]


def _id(container: Container) -> str:
    return container.where


def _served_address(container: Container) -> tuple[str, int]:
    """Where a container's service listens for /healthz: (host, port), from its command line."""
    c = container
    if (http := c.option("--http")) is not None:  # orchestrator, ingest, recorder
        return http.rpartition(":")[0], port_of(http)
    if (port := c.option("--http-port")) is not None:  # the agent
        return c.option("--http-host") or "127.0.0.1", int(port)
    if (port := c.option("--web-port")) is not None:  # the diagnostics stream: Faust's server
        return faust_env.WEB_BIND, int(port)
    if (port := c.option("--port")) is not None:  # the gateway
        return c.option("--host") or "127.0.0.1", int(port)
    raise AssertionError(f"{c.where}: no address for /healthz on {c.command}")


def test_the_default_ports_are_the_ones_the_readme_lists():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for port in filter(None, DEFAULT_PORTS.values()):
        assert f":{port}" in readme or f"port {port}" in readme, port


@pytest.mark.parametrize("where", ["k8s", "compose"])
def test_every_service_is_deployed(where):
    containers = k8s_containers() if where == "k8s" else compose_containers()
    deployed = {entry_point_target(c.command) for c in containers} - {None}
    assert deployed == service_targets()
    assert set(DEFAULT_PORTS) == service_targets()


def _command_words(container: Container) -> tuple[str, ...]:
    """The words that name the command: ``posttrain gateway``, ``posttrain-ingest``."""
    command = container.command
    return tuple(command[:2] if command[0] == "posttrain" else command[:1])


@pytest.fixture(scope="module")
def help_texts(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], str]:
    """``--help`` of each distinct command the files run (in parallel: each imports a service),
    with a home of its own so that nothing is written where a user's state lives."""
    bin_dir = Path(sys.executable).parent
    home = tmp_path_factory.mktemp("home")
    commands = {_command_words(c) for c in SERVICES}

    def run(words: tuple[str, ...]) -> str:
        done = subprocess.run(
            [str(bin_dir / words[0]), *words[1:], "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env={"COLUMNS": "300", "PATH": str(bin_dir), "HOME": str(home)},
        )
        assert done.returncode == 0, f"{' '.join(words)} --help: {done.stderr}"
        return done.stdout

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(commands, pool.map(run, commands), strict=True))


@pytest.mark.parametrize("container", SERVICES, ids=_id)
def test_each_option_is_one_the_command_takes(container, help_texts):
    words = _command_words(container)
    text = help_texts[words]
    missing = [o for o in container.options() if o not in text.split() and f"{o}," not in text]
    assert not missing, f"{container.where}: {' '.join(words)} takes no {missing}"


def test_the_prepare_step_runs_the_script_the_image_holds():
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert "COPY deploy/prepare.py ./deploy/prepare.py" in dockerfile
    assert "WORKDIR /opt/posttrain-src" in dockerfile
    prepares = [c for c in ALL if entry_point_target(c.command) is None]
    assert {c.where for c in prepares} == {"Job/posttrain-prepare", "compose/prepare"}
    for c in prepares:
        assert c.command[:2] == ["python", "/opt/posttrain-src/deploy/prepare.py"]
        assert (ROOT / "deploy" / "prepare.py").is_file()


@pytest.mark.parametrize("container", ALL, ids=_id)
def test_each_environment_variable_is_one_the_code_reads(container):
    read = env_names_read_by_code()
    # A variable set only for Kubernetes to expand in the command line, $(NAME), is not read.
    expanded = {n for n in container.env if any(f"$({n})" in w for w in container.command)}
    unknown = [n for n in container.env if n not in expanded and not env_name_is_read(n, read)]
    assert not unknown, f"{container.where}: no code reads {unknown}"
    assert {"KAFKA_BOOTSTRAP_SERVERS", "POSTTRAIN_TOPIC_NAMESPACE"} <= set(container.env)


def test_a_misspelt_variable_would_be_caught():
    read = env_names_read_by_code()
    assert env_name_is_read("KAFKA_BOOTSTRAP_SERVERS", read)
    assert env_name_is_read("POSTTRAIN_SECRET_DEPLOY_KEY", read)  # a prefix the agent reads
    assert not env_name_is_read("KAFKA_BOOTSTRAP_SERVER", read)
    assert not env_name_is_read("POSTTRAIN_INGEST_NO_SUCH_SETTING", read)


@pytest.mark.parametrize("container", SERVICES, ids=_id)
def test_each_service_serves_its_own_port_and_is_probed_on_healthz(container):
    default = DEFAULT_PORTS[entry_point_target(container.command) or ""]
    host, port = _served_address(container)
    if default is not None:
        assert port == default, f"{container.where}: serves on {port}, its default is {default}"
    # Probes come from outside the process's loopback (the kubelet, another container).
    assert host == "0.0.0.0", f"{container.where}: serves on {host}, unreachable by probes"
    assert container.probes, f"{container.where}: no health check"
    assert set(container.probes) == {("/healthz", port)}
    if container.where.startswith(("Deployment/", "StatefulSet/")):
        assert container.ports == [port]


def test_the_diagnostics_stream_is_given_a_port_apart():
    ports = {c.where: _served_address(c)[1] for c in SERVICES}
    for where in ("Deployment/posttrain-diagnostics", "compose/diagnostics"):
        assert ports[where] not in {p for p in DEFAULT_PORTS.values() if p}


def test_agents_run_on_gpu_nodes_with_as_many_gpus_as_they_offer():
    (agent,) = [
        d for d in k8s_resources("StatefulSet") if d["metadata"]["name"] == "posttrain-agent"
    ]
    pod = agent["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    gpus = container["command"][container["command"].index("--gpus") + 1]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == int(gpus) >= 1
    assert pod["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    # Its name is its id on posttrain.agents: the pod's stable name, not a random one.
    assert container["command"][container["command"].index("--name") + 1] == "$(POD_NAME)"

    service = compose()["services"]["agent"]
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    command = service["command"]
    assert device["capabilities"] == ["gpu"]
    assert device["count"] == int(command[command.index("--gpus") + 1])


def test_services_scale_by_replicas():
    replicas = {
        d["metadata"]["name"]: d["spec"]["replicas"]
        for d in k8s_resources("Deployment") + k8s_resources("StatefulSet")
    }
    assert all(n >= 2 for n in replicas.values()), replicas
    assert "posttrain-orchestrator" in replicas


def test_orchestrator_instances_are_static_members_named_by_their_pods():
    (orchestrator,) = [
        d for d in k8s_resources("StatefulSet") if d["metadata"]["name"] == "posttrain-orchestrator"
    ]
    (container,) = orchestrator["spec"]["template"]["spec"]["containers"]
    (identity,) = [e for e in container["env"] if e["name"] == "POSTTRAIN_ORCHESTRATOR_INSTANCE_ID"]
    assert identity["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The name the code reads it by (its option's environment variable).
    source = (ROOT / "services/orchestrator/posttrain/orchestrator/shell/main.py").read_text()
    assert '"POSTTRAIN_ORCHESTRATOR_INSTANCE_ID"' in source
    (service,) = [
        d
        for d in k8s_resources("Service")
        if d["metadata"]["name"] == orchestrator["spec"]["serviceName"]
    ]
    assert service["spec"]["clusterIP"] == "None"


def test_the_database_url_comes_from_the_operators_secret():
    (cluster,) = k8s_resources("Cluster")
    for c in k8s_resources("Deployment") + k8s_resources("Job") + k8s_resources("StatefulSet"):
        if c["metadata"]["name"] == "posttrain-agent":
            continue  # agents hold no database credentials
        for spec in c["spec"]["template"]["spec"]["containers"]:
            (url,) = [e for e in spec["env"] if e["name"] == "DATABASE_URL"]
            ref = url["valueFrom"]["secretKeyRef"]
            assert ref == {"name": f"{cluster['metadata']['name']}-app", "key": "uri"}


def test_the_image_installs_every_workspace_member():
    assert dockerfile_members() == makefile_members()
    for member in dockerfile_members():
        assert (ROOT / member / "pyproject.toml").is_file(), member


def test_the_image_exposes_every_port_served():
    exposed = set()
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.startswith("EXPOSE "):
            exposed |= {int(p) for p in line.split()[1:]}
    assert {_served_address(c)[1] for c in SERVICES} == exposed


def test_compose_builds_the_image_from_this_dockerfile():
    for name, service in compose()["services"].items():
        if "build" in service:
            context = (COMPOSE.parent / service["build"]["context"]).resolve()
            assert context == ROOT, name
            assert (context / service["build"]["dockerfile"]).resolve() == DOCKERFILE
