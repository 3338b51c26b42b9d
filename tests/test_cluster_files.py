"""Both cluster files pass Ray's own cluster-config preparation and validation, as `ray up` runs them."""

import copy
import re

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from orchestrator.config import CONFIGS_DIR
from tests.ray_nodes import head_start_env


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-local.yaml"])
def test_cluster_file_validates(name):
    config = yaml.safe_load((CONFIGS_DIR / name).read_text())
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert any("pip install -e ~/lora-sweep-miner" in c for c in prepared["setup_commands"])
    assert prepared["file_mounts"] == {"~/lora-sweep-miner": ".", "~/.ray/auth_token": "~/.ray/auth_token"}
    # every node starts with token authentication, using the token mounted from the laptop
    starts = prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]
    assert all(re.search(r"RAY_AUTH_MODE=token (\w+=\S+ )*ray start", c) for c in starts if "ray start" in c)
    # `ray job stop` gives a sweep time to save its state before Ray kills it
    assert int(head_start_env(name)["RAY_JOB_STOP_WAIT_TIME_S"]) >= 30


def test_a_broken_cluster_file_is_caught():
    config = yaml.safe_load((CONFIGS_DIR / "cluster.yaml").read_text())
    config["available_node_types"]["gpu_worker"]["min_workers"] = "two"
    with pytest.raises(Exception, match="two"):
        validate_config(prepare_config(config))


def test_the_aws_cluster_has_gpu_workers_and_a_head_without_trials():
    config = yaml.safe_load((CONFIGS_DIR / "cluster.yaml").read_text())
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert nodes["gpu_worker"]["min_workers"] >= 1 and nodes["gpu_worker"]["max_workers"] >= 1
