"""Benchmark 2: what each search finds for the training steps it spends.

Three sweeps of the embedded default (its model, data and training settings: configs/default.yaml):
- the seed grid: the original miner's 12 combinations, every trial to the end;
- TPE + ASHA over the wide space (configs/search/default.yaml), `--num_samples` trials;
- an exhaustive grid over that wide space (benchmarks/wide_grid.yaml), every trial to the end.

Steps are optimizer steps, counted from every trial's reports in the order they arrived, so a
trial ASHA stopped counts what it trained. Printed: the best eval loss each search reached with
the seed grid's total steps; and the share of the wide grid's steps TPE + ASHA spent before its
best came within 1% of the wide grid's best.

    python benchmarks/quality_per_compute.py [--num_samples 24] [--seeds 0 1 2]
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (best_within, machine, print_json, progress, run_orchestrator,  # noqa: E402
                               steps_to_reach, total_steps)

WIDE_GRID = Path(__file__).with_name("wide_grid.yaml")


def sweep(flags: list[str], out: Path, name: str) -> dict:
    run = run_orchestrator(flags, out, name)
    curve = progress(run["trials"])
    return {"name": name, "trials": len(run["trials"]), "total_steps": total_steps(run["trials"]),
            "best_eval_loss": curve[-1][1], "wall_s": round(run["wall_s"], 1), "curve": curve}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num_samples", type=int, default=24, help="TPE + ASHA trials per seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one TPE + ASHA sweep per sampler seed")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-quality-"))

    seed_grid = sweep(["--search", "seed_grid", "--scheduler", "fifo"], out, "seed-grid")
    wide = sweep(["--search", str(WIDE_GRID), "--scheduler", "fifo"], out, "wide-grid")
    target = wide["best_eval_loss"] * 1.01
    tpe_runs = []
    for seed in args.seeds:
        tpe = sweep(["--search", "default", "--scheduler", "asha", "--num_samples", str(args.num_samples),
                     "--seed", str(seed)], out, f"tpe-asha-seed{seed}")
        reached = steps_to_reach(tpe["curve"], target)
        tpe_runs.append({
            **{k: v for k, v in tpe.items() if k != "curve"},
            "best_within_seed_grid_steps": best_within(tpe["curve"], seed_grid["total_steps"]),
            "steps_to_within_1pct_of_wide_grid_best": reached,
            "share_of_wide_grid_steps": None if reached is None else round(reached / wide["total_steps"], 3)})
    shares = [r["share_of_wide_grid_steps"] for r in tpe_runs]
    print_json({
        "benchmark": "quality_per_compute", "machine": machine(), "num_samples": args.num_samples,
        "seed_grid": {k: v for k, v in seed_grid.items() if k != "curve"},
        "wide_grid": {**{k: v for k, v in wide.items() if k != "curve"}, "within_1pct_target": target},
        "tpe_asha": tpe_runs,
        "median_share_of_wide_grid_steps": None if None in shares else statistics.median(shares),
        "output": str(out),
    })


if __name__ == "__main__":
    main()
