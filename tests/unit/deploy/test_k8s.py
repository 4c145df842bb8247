"""deploy/k8s: every file parses, every resource validates against its schema (Kubernetes' own
through kubernetes-validate; Strimzi's and CloudNativePG's vendored from their CRDs), and the
infrastructure agrees with the code: a KRaft Kafka, a KafkaTopic per declared topic with its
partitions and configs, the services pointed at that cluster and database."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate

from posttrain.diagnostics.core.config import ConfigBook
from posttrain.events.topics import TOPICS
from tests.unit.deploy.manifests import K8S, SCHEMAS, k8s_documents, k8s_resources

# The oldest Kubernetes release the manifests are meant for (sidecar-free, batch/v1 Jobs).
KUBERNETES_VERSION = "1.30.0"

CUSTOM = {
    ("kafka.strimzi.io/v1", "Kafka"): "kafka.strimzi.io-v1-kafka.json",
    ("kafka.strimzi.io/v1", "KafkaNodePool"): "kafka.strimzi.io-v1-kafkanodepool.json",
    ("kafka.strimzi.io/v1", "KafkaTopic"): "kafka.strimzi.io-v1-kafkatopic.json",
    ("kafka.strimzi.io/v1", "KafkaUser"): "kafka.strimzi.io-v1-kafkauser.json",
    ("postgresql.cnpg.io/v1", "Cluster"): "postgresql.cnpg.io-v1-cluster.json",
}

RESOURCES = k8s_resources()


def _id(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def _closed(schema: Any) -> Any:
    """The schema with unknown fields refused, as the API server's strict field validation does
    (a CRD's schema leaves them to pruning, which would hide a misspelt field)."""
    if isinstance(schema, dict):
        schema = {k: _closed(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


def _custom_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    with (SCHEMAS / CUSTOM[(api_version, kind)]).open(encoding="utf-8") as f:
        schema = _closed(json.load(f))
    # metadata is the API server's, not the CRD's: any ObjectMeta is accepted here.
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def test_every_file_parses_and_the_kustomization_lists_them_all():
    (kustomization,) = [d for _, d in k8s_documents() if d.get("kind") == "Kustomization"]
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert all(
        doc["metadata"]["namespace"] == "posttrain"
        for doc in RESOURCES
        if doc["kind"] != "Namespace"
    )


@pytest.mark.parametrize("doc", RESOURCES, ids=_id)
def test_each_resource_validates_against_its_schema(doc):
    key = (doc["apiVersion"], doc["kind"])
    if key in CUSTOM:
        errors = sorted(_custom_validator(*key).iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validators_refuse_a_misspelt_field():
    deployment = copy.deepcopy(k8s_resources("Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    (topic, *_) = k8s_resources("KafkaTopic")
    topic = copy.deepcopy(topic)
    topic["spec"]["partition"] = 3
    assert list(_custom_validator("kafka.strimzi.io/v1", "KafkaTopic").iter_errors(topic))
    (user, *_) = k8s_resources("KafkaUser")
    user = copy.deepcopy(user)
    user["spec"]["authorization"]["acls"][0]["operation"] = ["Read"]
    assert list(_custom_validator("kafka.strimzi.io/v1", "KafkaUser").iter_errors(user))


def test_kafka_runs_in_kraft_mode_with_a_node_pool():
    (kafka,) = k8s_resources("Kafka")
    name = kafka["metadata"]["name"]
    pools = [
        p
        for p in k8s_resources("KafkaNodePool")
        if p["metadata"]["labels"]["strimzi.io/cluster"] == name
    ]
    roles = {role for p in pools for role in p["spec"]["roles"]}
    assert roles == {"controller", "broker"}
    assert "zookeeper" not in kafka["spec"]
    assert kafka["spec"]["kafka"]["config"]["auto.create.topics.enable"] is False
    assert "topicOperator" in kafka["spec"]["entityOperator"]


def test_every_declared_topic_has_a_kafka_topic_as_the_code_declares_it():
    (kafka,) = k8s_resources("Kafka")
    brokers = sum(
        p["spec"]["replicas"]
        for p in k8s_resources("KafkaNodePool")
        if "broker" in p["spec"]["roles"]
    )
    topics = {t["spec"]["topicName"]: t for t in k8s_resources("KafkaTopic")}
    assert set(topics) == {spec.name for spec in TOPICS.values()}
    for spec in TOPICS.values():
        topic = topics[spec.name]
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
        assert topic["spec"]["partitions"] == spec.partitions, spec.name
        config = {k: str(v) for k, v in topic["spec"]["config"].items()}
        assert {k: config.get(k) for k in spec.configs()} == spec.configs(), spec.name
        # Beyond what the code declares, only what a replicated cluster adds.
        assert set(config) - set(spec.configs()) == {"min.insync.replicas"}, spec.name
        assert 1 <= int(config["min.insync.replicas"]) < topic["spec"]["replicas"] <= brokers


def test_the_services_reach_the_kafka_cluster_and_database_deployed():
    (kafka,) = k8s_resources("Kafka")
    # The one listener, authenticated (test_kafka_users.py checks how).
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    (env,) = [c for c in k8s_resources("ConfigMap") if c["metadata"]["name"] == "posttrain-env"]
    bootstrap = f"{kafka['metadata']['name']}-kafka-bootstrap:{listener['port']}"
    assert env["data"]["KAFKA_BOOTSTRAP_SERVERS"] == bootstrap
    (cluster,) = k8s_resources("Cluster")
    assert cluster["spec"]["bootstrap"]["initdb"]["database"] == "posttrain"


def test_the_diagnostics_configuration_secret_is_one_the_stream_accepts(tmp_path):
    (secret,) = [
        s
        for s in k8s_resources("Secret")
        if s["metadata"]["name"] == "posttrain-diagnostics-config"
    ]
    (deployment,) = [
        d for d in k8s_resources("Deployment") if d["metadata"]["name"] == "posttrain-diagnostics"
    ]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (path,) = [e["value"] for e in container["env"] if e["name"] == "POSTTRAIN_DIAGNOSTICS_CONFIG"]
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    text = secret["stringData"][path.rpartition("/")[2]]
    ConfigBook.from_dict(yaml.safe_load(text))  # raises on anything the stream would refuse


def test_the_images_are_tagged_with_the_project_version():
    import tomllib

    from tests.unit.deploy.manifests import ROOT

    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "version"
    ]
    (kustomization,) = [d for _, d in k8s_documents() if d.get("kind") == "Kustomization"]
    assert {i["newTag"] for i in kustomization["images"]} == {version}
