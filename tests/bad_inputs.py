"""The bad-input table: for each case, the driver's arguments that must fail before Ray starts and a fragment of the
one line it must print. tests/test_cli.py runs every case; tests/bad_input_audit.py shows them beside every flag's
other bad values."""

from pathlib import Path

from tests.conftest import write_jsonl

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
