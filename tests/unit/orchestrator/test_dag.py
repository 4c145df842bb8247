"""DAG validation: every class of invalid pipeline gets its own message naming stage and field."""

from __future__ import annotations

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.orchestrator.core.dag import (
    DagResolver,
    InvalidPipeline,
    execution_layers,
    resolve_references,
    validate,
)


def sft(name, deps=(), model="base", **extra):
    return {
        "name": name,
        "task": "train_model",
        "depends_on": list(deps),
        "params": {"config": {"algorithm": "sft", "model_path": model, **extra}},
    }


def errors_of(stages):
    return [str(e) for e in validate(stages)[1]]


SEED_EXAMPLE = [
    {"name": "preprocess", "task": "preprocess_dataset", "params": {"input_path": "d.jsonl"}},
    sft("train_sft", ["preprocess"]),
    sft("train_rl_1", ["train_sft"], model="${train_sft.checkpoint}"),
    sft("train_rl_2", ["train_sft"], model="${train_sft.checkpoint}"),
    {
        "name": "evaluate",
        "task": "run_evaluation",
        "depends_on": ["train_rl_1", "train_rl_2"],
        "params": {"model_path": "${train_rl_1.checkpoint}"},
    },
]


def test_seed_example_layers():
    resolver = DagResolver(SEED_EXAMPLE)
    assert resolver.validate() is True
    assert resolver.get_execution_layers() == [
        ["preprocess"],
        ["train_sft"],
        ["train_rl_1", "train_rl_2"],
        ["evaluate"],
    ]


@pytest.mark.parametrize(
    ("stages", "expected"),
    [
        ([], "field 'stages': a pipeline needs at least one stage"),
        ([sft("a", ["ghost"])], "stage 'a', field 'depends_on': unknown dependency 'ghost'"),
        ([sft("a", ["a"])], "stage 'a', field 'depends_on': stage 'a' depends on itself"),
        (
            [sft("a", ["c"]), sft("b", ["a"]), sft("c", ["b"])],
            "stage 'a', field 'depends_on': dependency cycle: a -> c -> b -> a",
        ),
        ([sft("a"), sft("a")], "stage 'a', field 'name': duplicate stage name 'a'"),
        ([{"name": "a", "task": "train_modle"}], "stage 'a', field 'task': unknown task"),
        (
            [
                {
                    "name": "a",
                    "task": "train_model",
                    "params": {"config": {"algorithm": "rlhf", "model_path": "m"}},
                }
            ],
            "stage 'a', field 'params.config.algorithm': must be one of",
        ),
        (
            [{"name": "a", "task": "train_model", "params": {}}],
            "stage 'a', field 'params.algorithm': must be one of",
        ),
        (
            [{"name": "a", "task": "train_model", "params": {"config": {"algorithm": "sft"}}}],
            "stage 'a', field 'params.config.model_path': a model directory or reference",
        ),
        (
            [{"name": "a", "task": "command", "params": {"argv": "ls -l"}}],
            "stage 'a', field 'params.argv': command needs a non-empty list of strings",
        ),
        (
            [sft("a"), sft("b", model="${a.checkpoint}")],
            "stage 'b', field 'params': reference to 'a' output 'checkpoint': stage 'a' is not an "
            "ancestor",
        ),
        (
            [sft("b", model="${nope.outputs.dataset}")],
            "stage 'b', field 'params': reference to 'nope' output 'dataset': stage 'nope' does "
            "not exist",
        ),
        (
            [sft("b", model="${a.weights}"), sft("a")],
            "stage 'b', field 'params.config.model_path': malformed reference ${a.weights}",
        ),
        (
            [{"name": "a", "task": "preprocess_dataset", "depends_on": "x"}],
            "stage 'a', field 'depends_on': Input should be a valid list",
        ),
        (
            [
                {
                    "name": "a",
                    "task": "command",
                    "params": {"argv": ["x"]},
                    "retries": {"max_attempts": 0},
                }
            ],
            "stage 'a', field 'retries.max_attempts': must be at least 1",
        ),
    ],
)
def test_each_invalid_pipeline_class_has_its_own_message(stages, expected):
    messages = errors_of(stages)
    assert any(expected in m for m in messages), messages


def test_all_problems_are_reported_at_once():
    stages = [sft("a", ["ghost"]), sft("a"), {"name": "b", "task": "nope"}]
    messages = errors_of(stages)
    assert len(messages) == 3
    with pytest.raises(InvalidPipeline) as info:
        DagResolver(stages).validate()
    assert len(info.value.errors) == 3


def test_references_resolve_to_values_and_inside_strings():
    outputs = {"sft": {"checkpoint": "/c/1", "steps": 30}, "pre": {"dataset": "/d"}}
    params = {
        "model": "${sft.checkpoint}",
        "n": "${sft.outputs.steps}",
        "cmd": ["--data=${pre.outputs.dataset}", 3],
    }
    assert resolve_references(params, outputs) == {
        "model": "/c/1",
        "n": 30,
        "cmd": ["--data=/d", 3],
    }
    with pytest.raises(KeyError, match="recorded no output 'weights'"):
        resolve_references("${sft.outputs.weights}", outputs)


@st.composite
def random_graphs(draw):
    n = draw(st.integers(1, 12))
    names = [f"s{i}" for i in range(n)]
    edges = draw(
        st.lists(st.tuples(st.sampled_from(names), st.sampled_from(names)), max_size=3 * n)
    )
    return names, edges


@settings(max_examples=300, deadline=None)
@given(random_graphs())
def test_validation_agrees_with_networkx(graph):
    names, edges = graph
    deps = {n: sorted({a for a, b in edges if b == n}) for n in names}
    stages = [
        {"name": n, "task": "command", "params": {"argv": ["true"]}, "depends_on": deps[n]}
        for n in names
    ]
    g = nx.DiGraph()
    g.add_nodes_from(names)
    g.add_edges_from(edges)
    specs, errors = validate(stages)
    assert (not errors) == nx.is_directed_acyclic_graph(g)
    if not errors:
        layers = execution_layers(specs)
        depth = {n: i for i, layer in enumerate(layers) for n in layer}
        assert sorted(depth) == sorted(names)
        for a, b in edges:
            assert depth[a] < depth[b]
        # each layer is as early as possible: the longest path to it
        for n in names:
            longest = max(
                (len(p) - 1 for root in names for p in nx.all_simple_paths(g, root, n)), default=0
            )
            assert depth[n] == longest


def test_python_task_needs_an_entrypoint():
    assert errors_of([{"name": "p", "task": "python", "params": {"entrypoint": "mod:fn"}}]) == []
    nested = {"config": {"entrypoint": "mod:fn", "kwargs": {"n": 1}}}
    assert errors_of([{"name": "p", "task": "python", "params": nested}]) == []
    assert errors_of([{"name": "p", "task": "python", "params": {}}]) == [
        "stage 'p', field 'params.entrypoint': python needs 'module:function'"
    ]


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        (
            {"name": "a", "task": "command", "params": {"argv": ["x"]}, "timeout": 60},
            "stage 'a', field 'timeout': unknown key 'timeout' (did you mean \"timeout_s\"?)",
        ),
        (
            {"name": "a", "task": "command", "params": {"argv": ["x"]}, "retry": {}},
            "stage 'a', field 'retry': unknown key 'retry' (did you mean \"retries\"?)",
        ),
        (
            {
                "name": "a",
                "task": "command",
                "params": {"argv": ["x"]},
                "retries": {"max_attempt": 2},
            },
            "stage 'a', field 'retries.max_attempt': unknown key 'max_attempt' (did you mean "
            '"max_attempts"?)',
        ),
        (
            {"name": "a", "task": "command", "params": {"argv": ["x"]}, "resources": {"gpu": 1}},
            "stage 'a', field 'resources.gpu': unknown key 'gpu' (did you mean \"gpus\"?)",
        ),
        (
            sft("a", learning_rat=0.1),
            "stage 'a', field 'params.config.learning_rat': unknown key 'learning_rat' (did you "
            'mean "learning_rate"?)',
        ),
        (
            {"name": "a", "task": "preprocess_dataset", "params": {"input": "d.jsonl"}},
            "stage 'a', field 'params.input': unknown key 'input' (did you mean \"input_path\"?)",
        ),
        (
            {"name": "a", "task": "command", "params": {"argv": ["x"], "zzz": 1}},
            "stage 'a', field 'params.zzz': unknown key 'zzz'; known:",
        ),
    ],
)
def test_an_unknown_key_anywhere_in_a_stage_is_refused_with_a_suggestion(stage, expected):
    messages = errors_of([stage])
    assert any(m.startswith(expected) for m in messages), messages


def test_the_seeds_keys_are_known() -> None:
    stage = {
        "name": "train",
        "task": "train_model",
        "params": {
            "job_uuid": "zzz2",
            "config": {
                "algorithm": "grpo",
                "model_path": "m",
                "train_data_path": "d",
                "num_epochs": 1,
                "kl_coef": 0.1,
                "run_mode": "local",
            },
        },
    }
    assert errors_of([stage]) == []


SSH = {"host": "gpu-1", "user": "ml", "key_secret": "gpu-key", "remote_dir": "/scratch/runs"}


@pytest.mark.parametrize(
    ("config", "field", "says"),
    [
        ({"run_mode": "ssh"}, "params.config.ssh_config", "run_mode ssh needs ssh_config"),
        (
            {"run_mode": "ssh", "ssh_config": {**SSH, "password": "x"}},
            "params.config.ssh_config.password",
            "Extra inputs are not permitted",
        ),
        (
            {"run_mode": "ssh", "ssh_config": {k: v for k, v in SSH.items() if k != "host"}},
            "params.config.ssh_config.host",
            "Field required",
        ),
        (
            {"run_mode": "ssh", "ssh_config": {**SSH, "agent": True}},
            "params.config.ssh_config",
            "name exactly one of key_secret or agent: true",
        ),
        (
            {"run_mode": "local", "ssh_config": SSH},
            "params.config.ssh_config",
            "read only by a stage with run_mode: ssh",
        ),
    ],
)
def test_ssh_config_is_checked_field_by_field(config, field, says):
    stage = sft("a", **config)
    assert errors_of([stage]) == [f"stage 'a', field '{field}': {says}"]


def test_a_stage_over_ssh_is_accepted():
    assert errors_of([sft("a", run_mode="ssh", ssh_config=SSH)]) == []


def test_ranks_of_a_training_stage_are_a_positive_integer_one_per_gpu():
    assert errors_of([sft("a", nproc_per_node=2)]) == []
    assert errors_of([{**sft("a", nproc_per_node=4), "resources": {"gpus": 4}}]) == []
    assert errors_of([sft("a", nproc_per_node=0)]) == [
        "stage 'a', field 'params.config.nproc_per_node': must be a positive integer, got 0"
    ]
    assert errors_of([sft("a", nproc_per_node="2")]) == [
        "stage 'a', field 'params.config.nproc_per_node': must be a positive integer, got '2'"
    ]
    [message] = errors_of([{**sft("a", nproc_per_node=2), "resources": {"gpus": 4}}])
    assert message.startswith("stage 'a', field 'params.config.nproc_per_node': 2 ranks on ")
    # Only training stages have ranks: a command stage starts its own processes.
    [unknown] = errors_of(
        [{"name": "c", "task": "command", "params": {"argv": ["x"], "nproc_per_node": 2}}]
    )
    assert unknown.startswith("stage 'c', field 'params.nproc_per_node': unknown key")
