"""Bad input fails before Ray starts: one line on stderr, exit code 2, nothing trained."""

import subprocess
import sys
from pathlib import Path

import pytest

import orchestrator.ray_start
from orchestrator.run import main
from tests.bad_inputs import bad_inputs, model_with_remote_code
from tests.conftest import own_stderr


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
                                  "fused kernels on the CPU"])
def test_bad_input_fails_at_the_edge(case, tmp_path, capsys, monkeypatch, model_dir):
    def ray_must_not_start(_config):
        raise AssertionError("Ray started for bad input")

    monkeypatch.setattr(orchestrator.ray_start, "start_ray", ray_must_not_start)
    argv, fragment = bad_inputs(tmp_path, model_dir)[case]
    assert main(argv) == 2
    err = own_stderr(capsys)
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert fragment in err


@pytest.mark.parametrize("case", ["a trial that cannot fit", "a trial that cannot fit without checkpointing",
                                  "flash-attention without flash-attn"])
def test_what_the_memory_plan_refuses_fails_before_any_trial(case, local_ray, tmp_path, capsys, model_dir):
    """The memory plan (and the attention it assumes) is decided once, with the sweep's plan, where the cluster's
    GPUs (or this machine's) are known: after Ray is up, before any trial, as one line and exit 2 (here on the
    session's Ray)."""
    argv, fragment = bad_inputs(tmp_path, model_dir)[case]
    assert main([*argv, "--storage_path", str(tmp_path / "runs"), "--experiment_name", "nofit"]) == 2
    err = own_stderr(capsys)
    assert err.count("\n") == 1 and err.startswith("error: ") and fragment in err
    assert not (tmp_path / "runs" / "nofit").exists()  # nothing written: no marker, no trial


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
