"""Benchmark 1: the orchestrator on the seed grid against the original miner's search.

Both search the same 12 combinations (the original's grid) on the same tiny model folder and
the same pairs, with the same number of batches per combination (batch 1, 32 micro-batches per
optimizer step, every training pair `--epochs` times) and one evaluation per combination at
the end. The baseline runs as the original did: one process, one combination after another,
torch's default threads. The orchestrator runs `python -m orchestrator.run --search seed_grid`.
Both are timed from launch to exit, run one after the other on the same machine.

    python benchmarks/vs_seed.py [--epochs 1] [--out /tmp/bench-vs-seed]
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (embedded_model_dir, machine, print_json, run_baseline, run_orchestrator,  # noqa: E402
                               write_split)
from trainables.embedded_model import DATASET  # noqa: E402


def compare_once(model_dir: Path, epochs: int, out: Path, run: int) -> dict:
    train_file, eval_file = write_split(out / "data", DATASET, repeats=epochs)
    baseline = run_baseline(model_dir, train_file, eval_file, out / f"baseline-{run}")
    ours = run_orchestrator(["--search", "seed_grid", "--scheduler", "fifo", "--load_model_dir", str(model_dir),
                             "--dataset_path", str(DATASET), "--tokenizer", "model", "--num_epochs", str(epochs),
                             "--batch_size", "1", "--accumulation_steps", "32", "--eval_steps", "1000000"],
                            out, f"seed-grid-{run}")
    trials = ours["trials"]
    return {
        # the baseline trains every line of its file once; the orchestrator every training pair `epochs` times
        "batches_per_combination": baseline["trained_batches"] // len(baseline["combinations"]),
        "baseline": {"wall_s": round(baseline["wall_s"], 1), "peak_rss_mb": baseline["root_peak_rss_mb"],
                     "startup_s": round(baseline["wall_s"] - baseline["internal_wall_s"], 1),  # interpreter, imports
                     "per_combination_s": round(baseline["internal_wall_s"] / len(baseline["combinations"]), 2),
                     "best_eval_loss": min(c["eval_loss"] for c in baseline["combinations"])},
        "orchestrator": {
            "wall_s": round(ours["wall_s"], 1), "startup_s": round(ours["startup_s"], 1),
            "training_span_s": round(ours["training_span_s"], 1), "tail_s": round(ours["tail_s"], 1),
            "per_trial_s": round(statistics.mean(t["time_total_s"] for t in trials), 2),
            # inside a trial, outside its training loop: model load, LoRA, evaluation, checkpoint, report
            "per_trial_overhead_s": round(statistics.mean(t["time_total_s"] - t["train_s"] for t in trials), 2),
            "driver_peak_rss_mb": ours["root_peak_rss_mb"], "all_processes_peak_rss_mb": ours["tree_peak_rss_mb"],
            "trial_worker_peak_rss_mb": max(r["peak_rss_mb"] for t in trials for r in t["reports"]),
            "best_eval_loss": min(r["eval_loss"] for t in trials for r in t["reports"]), "trials": len(trials)},
        "wall_ratio": round(ours["wall_s"] / baseline["wall_s"], 3),
        "training_ratio": round(ours["training_span_s"] / baseline["internal_wall_s"], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=1, help="passes over the training pairs per combination")
    ap.add_argument("--repeats", type=int, default=3, help="baseline/orchestrator pairs, run alternately")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-vs-seed-"))
    model_dir = embedded_model_dir()
    runs = [compare_once(model_dir, args.epochs, out, run) for run in range(args.repeats)]
    median = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    print_json({"benchmark": "vs_seed", "machine": machine(), "epochs": args.epochs, "repeats": args.repeats,
                "median_wall_ratio": median("wall_ratio"), "median_training_ratio": median("training_ratio"),
                "median_startup_s": statistics.median(r["orchestrator"]["startup_s"] for r in runs),
                "runs": runs, "output": str(out)})


if __name__ == "__main__":
    main()
