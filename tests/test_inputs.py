"""The driver's data flags reach the right source: --dataset_path (JSONL, Parquet), --dataset_repo_id, columns."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.config import ConfigError, load_config
from orchestrator.inputs import read_training_pairs
from tests.hub_server import local_hub  # noqa: F401  (the fixture)

PAIRS = [{"prompt": f"q{i}?", "answer": f"a{i}."} for i in range(5)]


def test_parquet_with_custom_columns(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(PAIRS), path)
    config = load_config(["--dataset_path", str(path), "--question_column", "prompt", "--response_column", "answer"])
    assert read_training_pairs(config) == [{"question": p["prompt"], "response": p["answer"]} for p in PAIRS]


def test_hub_dataset_repo(local_hub):
    rows = "".join(json.dumps(p) + "\n" for p in PAIRS).encode()
    local_hub.add_commit("someone/pairs", {"train.jsonl": rows}, repo_type="dataset")
    config = load_config(["--dataset_repo_id", "someone/pairs", "--question_column", "prompt",
                          "--response_column", "answer"])
    pairs = read_training_pairs(config, hub_endpoint=local_hub.url)
    assert pairs == [{"question": p["prompt"], "response": p["answer"]} for p in PAIRS]


def test_one_data_source_at_a_time():
    with pytest.raises(ConfigError, match="--dataset_path and --use_cortex both choose the training data"):
        load_config(["--dataset_path", "x.jsonl", "--use_cortex"])
