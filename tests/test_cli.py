"""Bad input fails before Ray starts: one line on stderr, exit code 2, nothing trained."""

import subprocess
import sys
from pathlib import Path

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
    binary = tmp_path / "binary"
    binary.write_bytes(bytes(range(256)) * 4)
    def yaml_file(name: str, text: str) -> str:
        (tmp_path / name).write_text(text)
        return str(tmp_path / name)

    shipped = (Path(__file__).resolve().parents[1] / "configs" / "competitions.yaml").read_text()

    def competitions(name: str, old: str, new: str) -> str:
        assert old in shipped
        return yaml_file(name, shipped.replace(old, new, 1))

    # competition 4 as shipped, but for the two rules the tiny model breaks (3.2B parameters, bfloat16 weights)
    tiny_4 = yaml_file("tiny4.yaml", shipped.replace("min_parameters: 3200000000", "min_parameters: 0")
                       .replace("dtype: bfloat16", "").replace("sequence_length: 16384", "sequence_length: 2048"))
    epsilon_4 = "epsilon: {start: 0.05, end: 0.01, decay_blocks: 21600}"
    empty_responses = write_jsonl(tmp_path / "empty-responses.jsonl",
                                  ['{"question": "q%d", "response": " "}' % i for i in range(20)])
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1" + b"\0" * 100 + b"PAR1")
    finished = tmp_path / "finished"
    (finished / "done").mkdir(parents=True)
    (finished / "done" / "lora_sweep.json").write_text('{"status": "finished"}')
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
        # issue 23: each of these once ended in a traceback, a hang, or a sweep that should not have run
        "a task without a weight": (["--competitions_file", competitions("w.yaml", ", weight: 0.5}", "}")],
                                    "each task needs exactly name, method, dataset and weight"),
        "epsilon without its end": (["--competitions_file", competitions("e.yaml", epsilon_4, "epsilon: {start: 0.05}")],
                                    "epsilon takes start, end and decay_blocks"),
        "epsilon not a number": (["--competitions_file", competitions("a.yaml", epsilon_4, "epsilon: abc")],
                                 "epsilon value must be a number"),
        "a competition that is a number": (["--competitions_file", yaml_file("n.yaml", "competitions: {m1: 5}\n")],
                                           "must be a mapping of its rules"),
        "a negative task weight": (["--competitions_file", competitions("neg.yaml", "weight: 0.5}", "weight: -0.5}")],
                                   "a weight must be a positive number"),
        "a zero task weight": (["--competitions_file", competitions("zero.yaml", "weight: 0.5}", "weight: 0}")],
                               "a weight must be a positive number"),
        "one competition id twice": (["--competitions_file", yaml_file("dup.yaml", shipped + "  4: {architectures: [X]}\n")],
                                     "the key '4' appears twice"),
        "binary competitions file": (["--competitions_file", str(binary)], "UnicodeDecodeError"),
        "binary config": (["--config", str(binary)], "is not UTF-8 text"),
        "binary search file": (["--search", str(binary)], "is not UTF-8 text"),
        "binary env file": (["--env_file", str(binary)], "--env_file"),
        "a folder as env file": (["--env_file", str(tmp_path)], "is a folder, not a file"),
        "config keys that are not names": (["--config", yaml_file("k.yaml", "1: 2\nnull: 3\n")], "unknown key"),
        "num_samples: true": (["--config", yaml_file("true.yaml", "num_samples: true\n")], "num_samples in"),
        "num_samples: true in a search file": (["--search", space_file(tmp_path, "t", **{"sampler: tpe": "sampler: tpe\nnum_samples: true"})],
                                               "num_samples"),
        "a negative seed": (["--seed", "-1"], "--seed must be between 0"),
        "a count past any tokenizer": (["--max_length", "99999999999999999999"], "is out of range: at most"),
        "a subnet uid off the chain": (["--netuid", "-5"], "--netuid must be a subnet uid from 0 to 65535"),
        "a loss threshold no model meets": (["--avg_loss_upload_threshold", "-1"], "must be above 0"),
        "an endless time budget": (["--time_budget", "9" * 400], "longer than a year"),
        "a time budget no trial can use": (["--time_budget", "0.001"], "shorter than 10 s"),
        "task data for a competition without tasks": (["--task_data", "X=/nonexistent"], "has none"),
        "a corrupt parquet as task data": (
            ["--competition_id", "4", "--competitions_file", tiny_4, "--tokenizer", "model",
             "--task_data", f"SYNTHETIC_1_SFT={corrupt},CODEFORCES_COTS={corrupt}"],
            "is not a readable Parquet file"),
        "micro-batches shorter than a pair": (["--micro_batch_tokens", "1"], "shorter than the longest training pair"),
        "an eval share that leaves no step": (["--eval_fraction", "0.999"], "fewer than one optimizer step"),
        "every response empty": (["--dataset_path", str(empty_responses)], "has an empty response"),
        "a finished experiment's name again": (["--storage_path", str(finished), "--experiment_name", "done"],
                                               "give a new --experiment_name, or add --resume"),
        "an address where nothing answers": (["--address", "127.0.0.1:1"], "nothing answers there"),
        "flash-attention without flash-attn": (["--attn_implementation", "flash_attention_2"], "cannot run here"),
        "fused kernels on the CPU": (["--fused_kernels", "liger", "--device", "cpu"], "needs CUDA GPUs"),
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
                                  "a trial that cannot fit", "a trial that cannot fit without checkpointing",
                                  "a task without a weight", "epsilon without its end", "epsilon not a number",
                                  "a competition that is a number", "a negative task weight", "a zero task weight",
                                  "one competition id twice", "binary competitions file", "binary config",
                                  "binary search file", "binary env file", "a folder as env file",
                                  "config keys that are not names", "num_samples: true",
                                  "num_samples: true in a search file", "a negative seed", "a count past any tokenizer",
                                  "a subnet uid off the chain", "a loss threshold no model meets", "an endless time budget",
                                  "a time budget no trial can use", "task data for a competition without tasks",
                                  "a corrupt parquet as task data", "micro-batches shorter than a pair",
                                  "an eval share that leaves no step", "every response empty",
                                  "a finished experiment's name again", "an address where nothing answers",
                                  "flash-attention without flash-attn", "fused kernels on the CPU"])
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


def test_a_storage_that_never_answers_is_refused_in_one_line_not_waited_on_forever():
    """gs://x without credentials once hung the driver in the storage probe for over 1,000 s."""
    import socket
    import time

    from publishing.storage import writable_problem

    with socket.socket() as silent:  # accepts connections and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        started = time.monotonic()
        problem = writable_problem(f"s3://bucket/x?endpoint_override=127.0.0.1:{port}&scheme=http", timeout_s=2)
        assert time.monotonic() - started < 10
    assert problem == "no answer within 2 s"


def test_help_and_bad_flags_never_import_torch():
    """The driver's first checks are light: --help, --list_competitions and a bad flag import neither torch nor
    transformers, Optuna or Ray (0.2 s, where loading torch took 1.5 s more)."""
    probe = ("import runpy, sys\n"
             "for argv in (['--help'], ['--num_samples', '0'], ['--list_competitions'], ['--max_length', 'x']):\n"
             "    sys.argv = ['orchestrator.run', *argv]\n"
             "    try:\n"
             "        runpy.run_module('orchestrator.run', run_name='__main__')\n"
             "    except SystemExit:\n"
             "        pass\n"
             "print(sorted(m for m in ('torch', 'transformers', 'optuna', 'ray', 'peft') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-2000:]
