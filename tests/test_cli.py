"""Bad input fails before Ray starts: one line on stderr, exit code 2, nothing trained."""

import subprocess
import sys

import pytest

import orchestrator.sweep
from orchestrator.run import main
from tests.conftest import write_jsonl

GOOD_SPACE = "sampler: tpe\nspace:\n  learning_rate: {loguniform: [1.0e-5, 1.0e-3]}\n  r: [8]\n  alpha: [16]\n"


def space_file(tmp_path, name, **replace):
    text = GOOD_SPACE
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def bad_inputs(tmp_path):
    empty_dir = tmp_path / "empty-model"
    empty_dir.mkdir()
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("num_epochs: 1\nnum_epoch: 2\n")
    return {
        "unknown flag": (["--learningrate", "3"], "unrecognized arguments"),
        "unknown config key": (["--config", str(bad_yaml)], "unknown key 'num_epoch'"),
        "lr <= 0": (["--search", space_file(tmp_path, "lr", **{"1.0e-5": "0.0"})], "learning_rate values must be positive"),
        "r <= 0": (["--search", space_file(tmp_path, "r", **{"[8]": "[0]"})], "r values must be positive"),
        "alpha <= 0": (["--search", space_file(tmp_path, "alpha", **{"[16]": "[-16]"})], "alpha values must be positive"),
        "empty list": (["--search", space_file(tmp_path, "empty", **{"[16]": "[]"})], "empty list"),
        "model dir missing": (["--load_model_dir", str(tmp_path / "nope")], "does not exist"),
        "model dir empty": (["--load_model_dir", str(empty_dir)], "holds no model"),
        "model dir without safetensors": (["--load_model_dir", str(no_weights)], "no .safetensors"),
        "dataset missing": (["--dataset_path", str(tmp_path / "none.jsonl")], "does not exist"),
        "dataset empty": (["--dataset_path", str(write_jsonl(tmp_path / "e.jsonl", []))], "is empty"),
        "dataset not JSONL": (["--dataset_path", str(write_jsonl(tmp_path / "n.jsonl", ["a,b"]))], "is not JSON"),
        "dataset lacks keys": (["--dataset_path", str(write_jsonl(tmp_path / "k.jsonl", ['{"q": "a"}']))],
                               "has no column 'question', 'response'"),
        "num_samples < 1": (["--num_samples", "0"], "--num_samples must be at least 1"),
        "cpus_per_trial too large": (["--cpus_per_trial", "4096"], "more than this machine's"),
        "a GPU this machine lacks": (["--device", "cuda:7"], "--device cuda:7 but this machine has"),
        "starting model outside the competition": (["--competition_id", "g1"], "breaks competition g1's limits"),
        "unknown competition": (["--competition_id", "zz"], "unknown competition 'zz'"),
    }




@pytest.mark.parametrize("case", ["unknown flag", "unknown config key", "lr <= 0", "r <= 0", "alpha <= 0",
                                  "empty list", "model dir missing", "model dir empty",
                                  "model dir without safetensors", "dataset missing", "dataset empty",
                                  "dataset not JSONL", "dataset lacks keys", "num_samples < 1",
                                  "cpus_per_trial too large", "a GPU this machine lacks",
                                  "starting model outside the competition", "unknown competition"])
def test_bad_input_fails_at_the_edge(case, tmp_path, capsys, monkeypatch):
    def ray_must_not_start(_config):
        raise AssertionError("Ray started for bad input")

    monkeypatch.setattr(orchestrator.sweep, "start_ray", ray_must_not_start)
    argv, fragment = bad_inputs(tmp_path)[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert fragment in err


def test_bad_input_in_a_real_process_exits_fast_with_one_line():
    done = subprocess.run([sys.executable, "-m", "orchestrator.run", "--num_samples", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == "error: --num_samples must be at least 1, got 0\n"
    assert "Ray" not in done.stdout
