"""Bad input fails before Ray starts: one line on stderr, exit code 2, nothing trained."""

import subprocess
import sys

import pytest

import orchestrator.sweep
from orchestrator.run import main
from tests.conftest import own_stderr, write_jsonl

GOOD_SPACE = "sampler: tpe\nspace:\n  learning_rate: {loguniform: [1.0e-5, 1.0e-3]}\n  r: [8]\n  alpha: [16]\n"


def space_file(tmp_path, name, **replace):
    text = GOOD_SPACE
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def model_with_remote_code(model_dir, folder, config_changes=None, tokenizer_changes=None):
    """A copy of the tiny model whose configs point at Python in the folder; importing it leaves a mark."""
    import json
    import shutil

    shutil.copytree(model_dir, folder)
    # an absolute path: transformers imports a copy of the module from its own cache folder
    evil = f"import pathlib; pathlib.Path({str(folder / 'CODE_RAN')!r}).write_text('ran')\n"
    (folder / "evil.py").write_text(evil + "class Evil: pass\n")
    for name, changes in [("config.json", config_changes), ("tokenizer_config.json", tokenizer_changes)]:
        if changes:
            data = json.loads((folder / name).read_text())
            data.update(changes)
            (folder / name).write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
    return folder


def bad_inputs(tmp_path, model_dir):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"question": "caf\xe9?", "response": "yes"}\n')
    remote_model = model_with_remote_code(model_dir, tmp_path / "remote-model", config_changes={
        "model_type": "evil_llama", "auto_map": {"AutoModelForCausalLM": "evil.Evil"}})
    remote_tokenizer = model_with_remote_code(model_dir, tmp_path / "remote-tokenizer", tokenizer_changes={
        "tokenizer_class": None, "auto_map": {"AutoTokenizer": ["evil.Evil", None]}})
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
        "a model too small for competition 4": (["--competition_id", "4"], "breaks competition 4's limits"),
        "weight decay nan": (["--weight_decay", "nan"], "--weight_decay must be a finite number"),
        "flag prefix": (["--num_sample", "2"], "unrecognized arguments: --num_sample"),
        "experiment outside storage": (["--experiment_name", "../x"], "must be a plain folder name"),
        "storage is a file": (["--storage_path", str(a_file)], "is a file, not a folder"),
        "storage cannot be written": (["--storage_path", str(a_file / "x")], "cannot be written"),
        "resume a missing experiment": (["--storage_path", str(tmp_path), "--resume", "--experiment_name", "nope"],
                                        "no experiment 'nope' to continue"),
        "dataset not UTF-8": (["--dataset_path", str(latin1)], "line 1 is not UTF-8"),
        "model needs its own code": (["--load_model_dir", str(remote_model)], "needs the folder's own code"),
        "tokenizer needs its own code": (["--load_model_dir", str(remote_tokenizer)],
                                         "only the folder's own code builds"),
        # 50M tokens a forward pass: far past this machine's memory, checkpointing or not
        "a trial that cannot fit": (["--micro_batch_tokens", "50000000"], "with gradient checkpointing"),
        "a trial that cannot fit without checkpointing": (
            ["--micro_batch_tokens", "50000000", "--gradient_checkpointing", "off"], "--gradient_checkpointing on"),
    }




@pytest.mark.parametrize("case", ["unknown flag", "unknown config key", "lr <= 0", "r <= 0", "alpha <= 0",
                                  "empty list", "model dir missing", "model dir empty",
                                  "model dir without safetensors", "dataset missing", "dataset empty",
                                  "dataset not JSONL", "dataset lacks keys", "num_samples < 1",
                                  "cpus_per_trial too large", "a GPU this machine lacks",
                                  "starting model outside the competition", "unknown competition",
                                  "a model too small for competition 4",
                                  "weight decay nan", "flag prefix", "experiment outside storage", "storage is a file",
                                  "storage cannot be written", "resume a missing experiment", "dataset not UTF-8",
                                  "model needs its own code", "tokenizer needs its own code",
                                  "a trial that cannot fit", "a trial that cannot fit without checkpointing"])
def test_bad_input_fails_at_the_edge(case, tmp_path, capsys, monkeypatch, model_dir):
    def ray_must_not_start(_config):
        raise AssertionError("Ray started for bad input")

    monkeypatch.setattr(orchestrator.sweep, "start_ray", ray_must_not_start)
    argv, fragment = bad_inputs(tmp_path, model_dir)[case]
    assert main(argv) == 2
    err = own_stderr(capsys)
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert fragment in err


def test_bad_input_in_a_real_process_exits_fast_with_one_line():
    done = subprocess.run([sys.executable, "-m", "orchestrator.run", "--num_samples", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == "error: --num_samples must be at least 1, got 0\n"
    assert "Ray" not in done.stdout


def test_a_model_folders_code_never_runs_whatever_the_user_types(tmp_path, model_dir):
    """Transformers asks "run the custom code? [y/N]" on a terminal; a 'y' on stdin must change nothing."""
    folder = model_with_remote_code(model_dir, tmp_path / "m", tokenizer_changes={
        "tokenizer_class": None, "auto_map": {"AutoTokenizer": ["evil.Evil", None]}})
    done = subprocess.run([sys.executable, "-m", "orchestrator.run", "--load_model_dir", str(folder)],
                          input="y\ny\n", capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert not (folder / "CODE_RAN").exists()


def test_every_load_refuses_a_folders_code_even_past_the_edge_check(tmp_path, model_dir):
    """The trial's own loads pass trust_remote_code=False: a known architecture with an auto_map loads natively."""
    from orchestrator.inputs import load_tokenizer
    from trainables.lora_trial import TrialSettings, load_lora_model
    from trainables.model_loading import pick_device

    folder = model_with_remote_code(model_dir, tmp_path / "m", config_changes={
        "auto_map": {"AutoModelForCausalLM": "evil.Evil"}}, tokenizer_changes={
        "auto_map": {"AutoTokenizer": ["evil.Evil", None]}})
    model = load_lora_model(TrialSettings(model_dir=str(folder)), 8, 16, pick_device("cpu"))
    load_tokenizer(folder)
    assert type(model.get_base_model()).__name__ == "LlamaForCausalLM"
    assert not (folder / "CODE_RAN").exists()
