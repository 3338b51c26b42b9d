"""Benchmarks 3 and 4: one trial against a bare transformers + peft loop; the driver's memory.

The same model folder, training pairs, micro-batches (batch size, seeded order, padding) and
thread count on both sides. The trial is the product's: `python -m orchestrator.run` with a
one-point grid, in a Ray worker, with one evaluation and checkpoint at the end. The bare loop
is benchmarks/bare_loop.py. Tokens/s is measured over each side's training loop (the trial
reports it per evaluation window, excluding evaluation and checkpointing); peak RSS is the
trial worker's own ru_maxrss against the bare loop's. `--hidden/--layers` build a larger Llama
from a config (with the embedded tokenizer), where the weights, not the libraries, dominate memory.

    python benchmarks/trainable_vs_bare.py [--hidden 256 --layers 2] [--batch_size 8] [--epochs 2] [--repeats 3]
"""

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (PYTHON, embedded_model_dir, machine, print_json, run_orchestrator,  # noqa: E402
                               run_process, write_split)
from trainables.embedded_model import DATASET, MODEL_CONFIG, TOKENIZER_DIR  # noqa: E402

BARE_LOOP = Path(__file__).with_name("bare_loop.py")
HYPERPARAMETERS = {"learning_rate": 1e-4, "r": 32, "alpha": 16}


def model_folder(hidden: int, layers: int, out: Path) -> Path:
    """The embedded model, or a wider/deeper Llama of the same family built from a config (random weights)."""
    config = json.loads(MODEL_CONFIG.read_text())
    if (hidden, layers) == (config["hidden_size"], config["num_hidden_layers"]):
        return embedded_model_dir()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = out / f"llama-h{hidden}-l{layers}"
    if not (folder / "model.safetensors").exists():
        heads = max(1, hidden // 64)
        config.update(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=heads, intermediate_size=int(hidden * 8 / 3 // 64 * 64))
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(**config)).save_pretrained(folder, safe_serialization=True)
        for path in TOKENIZER_DIR.iterdir():
            shutil.copy2(path, folder / path.name)
    return folder


def parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "np") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def one_trial(model_dir: Path, args, out: Path, run: int) -> dict:
    grid = out / "one_point.yaml"
    grid.write_text(json.dumps({"sampler": "grid", "space": {k: [v] for k, v in HYPERPARAMETERS.items()}}))
    result = run_orchestrator(["--search", str(grid), "--scheduler", "fifo", "--load_model_dir", str(model_dir),
                               "--dataset_path", str(DATASET), "--tokenizer", "model", "--num_epochs", str(args.epochs),
                               "--batch_size", str(args.batch_size), "--accumulation_steps", "1",
                               "--packing", "off",  # the bare loop's padded batches: the same work on both sides
                               "--eval_steps", "1000000", "--cpus_per_trial", str(args.threads)], out, f"trial-{run}")
    [trial] = result["trials"]
    tokens = sum(r["tokens_per_s"] * r["train_s"] for r in trial["reports"])
    return {"tokens_per_s": round(tokens / trial["train_s"], 1), "train_s": round(trial["train_s"], 2),
            "worker_peak_rss_mb": max(r["peak_rss_mb"] for r in trial["reports"]),
            "driver_peak_rss_mb": result["root_peak_rss_mb"], "all_processes_peak_rss_mb": result["tree_peak_rss_mb"]}


def bare(model_dir: Path, train_file: Path, args, out: Path, run: int) -> dict:
    log = out / f"bare-{run}.log"
    run_process([PYTHON, str(BARE_LOOP), "--model_dir", str(model_dir), "--data", str(train_file),
                 "--batch_size", str(args.batch_size), "--num_epochs", str(args.epochs), "--threads", str(args.threads),
                 *[f"--{k}={v}" for k, v in HYPERPARAMETERS.items()]], log)
    return json.loads(next(line for line in log.read_text().splitlines() if line.startswith("{")))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="bare/trial pairs, run alternately")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-trainable-"))
    model_dir = model_folder(args.hidden, args.layers, out)
    train_file, _ = write_split(out / "data", DATASET)

    runs = []
    for run in range(args.repeats):
        ceiling = bare(model_dir, train_file, args, out, run)
        trial = one_trial(model_dir, args, out, run)
        runs.append({"bare": ceiling, "trial": trial,
                     "throughput_ratio": round(trial["tokens_per_s"] / ceiling["tokens_per_s"], 3),
                     "rss_ratio": round(trial["worker_peak_rss_mb"] / ceiling["peak_rss_mb"], 3)})
    median = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    print_json({"benchmark": "trainable_vs_bare", "machine": machine(), "model_parameters": parameters(model_dir),
                "hidden": args.hidden, "layers": args.layers, "batch_size": args.batch_size, "epochs": args.epochs,
                "threads": args.threads, "median_throughput_ratio": median("throughput_ratio"),
                "median_rss_ratio": median("rss_ratio"),
                "median_driver_peak_rss_mb": statistics.median(r["trial"]["driver_peak_rss_mb"] for r in runs),
                "runs": runs, "output": str(out)})


if __name__ == "__main__":
    main()
