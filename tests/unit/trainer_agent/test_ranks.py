"""How many ranks a stage runs, and the torchrun command line its ranks are started with."""

from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.trainer_agent.rank_launch import rank_result_path, torchrun_argv
from posttrain.trainer_agent.ranks import Ranks, stage_ranks


def test_a_training_stage_runs_one_rank_per_gpu_or_as_many_as_it_names():
    assert stage_ranks("train_model", {}, 0) == 1
    assert stage_ranks("train_model", {}, 1) == 1
    assert stage_ranks("train_model", {}, 4) == 4
    assert stage_ranks("train_model", {"nproc_per_node": 2}, 0) == 2
    # Other tasks are one process whatever their GPUs (a command starts its own).
    assert stage_ranks("command", {"nproc_per_node": 2}, 4) == 1
    assert stage_ranks("run_evaluation", {}, 2) == 1


@pytest.mark.parametrize("value", [0, -1, "2", 1.5, True])
def test_a_rank_count_that_is_not_a_positive_integer_is_refused_naming_the_field(value):
    with pytest.raises(ValueError, match=r"params\.config\.nproc_per_node must be a positive"):
        stage_ranks("train_model", {"nproc_per_node": value}, 0)


def test_ranks_come_from_torchruns_environment_and_one_process_shares_with_itself():
    assert Ranks.from_env({}) == Ranks(0, 1)
    ranks = Ranks.from_env({"RANK": "1", "WORLD_SIZE": "2"})
    assert (ranks.rank, ranks.world_size, ranks.is_main) == (1, 2, False)
    assert Ranks().share({"a": 1}) == {"a": 1}


def test_torchrun_parses_the_stage_command_line(tmp_path: Path):
    from torch.distributed.run import config_from_args, parse_args

    config, _, _ = config_from_args(parse_args(torchrun_argv(tmp_path, 3, 2)))
    assert (config.min_nodes, config.max_nodes, config.nproc_per_node) == (1, 1, 2)
    assert config.start_method == "fork" and config.max_restarts == 0
    assert config.rdzv_backend == "c10d" and config.rdzv_endpoint == "127.0.0.1:0"
    assert rank_result_path(tmp_path, 3, 1) == tmp_path / "result-3.rank1.json"
