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

Issue 14 (`--issue14`), over the same wide grid's best as the target:
- truthful pruning: TPE + ASHA per seed twice, ASHA-stopped trials told to Optuna as stock Ray Tune does
  (`--pruned_trials complete`: COMPLETE with their partial-budget loss) and as the product does (`pruned`);
- warm start: per seed, a first sweep of `--warm_trials` trials into a new `--study` journal (the cold sweep), then
  a second sweep with the same flags, which continues that study.
Printed per seed: steps to within 1% of the wide grid's best (the second sweep's own steps only).

    python benchmarks/quality_per_compute.py --issue14 --seeds 0 1 2 3 4 [--num_samples 24] [--warm_trials 12]
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


def finished_sweep(out: Path, name: str) -> dict | None:
    """A sweep an earlier run of this benchmark already wrote into `out` (the wide grid takes the longest)."""
    from benchmarks.common import read_trials

    experiment = out / "ray_results" / name
    trials = read_trials(experiment) if experiment.is_dir() else []
    if not trials:
        return None
    curve = progress(trials)
    return {"name": name, "trials": len(trials), "total_steps": total_steps(trials), "best_eval_loss": curve[-1][1],
            "wall_s": None, "curve": curve, "reused": str(experiment)}


def issue14(args, out: Path) -> None:
    wide = finished_sweep(out, "wide-grid") or sweep(["--search", str(WIDE_GRID), "--scheduler", "fifo"], out,
                                                     "wide-grid")
    target = wide["best_eval_loss"] * 1.01
    tpe = ["--search", "default", "--scheduler", "asha"]

    def run(flags: list[str], name: str) -> dict:  # a sweep this benchmark finished before is read back
        return finished_sweep(out, name) or sweep(flags, out, name)

    pruning, warm = [], []
    for seed in args.seeds:
        row = {"seed": seed}
        for mode in ("complete", "pruned"):
            result = run([*tpe, "--num_samples", str(args.num_samples), "--seed", str(seed), "--pruned_trials", mode],
                         f"pruned-{mode}-seed{seed}")
            row[mode] = {"steps_to_target": steps_to_reach(result["curve"], target),
                         "total_steps": result["total_steps"], "best_eval_loss": result["best_eval_loss"]}
        pruning.append(row)
        # --seed also fixes the held-out split, so it is part of the study's fingerprint: both sweeps share it. The
        # first sweep is the cold one (a new study); the second continues its study with the same flags.
        n, study = ["--num_samples", str(args.warm_trials), "--seed", str(seed)], ["--study", f"warm-seed{seed}.journal"]
        cold = run([*tpe, *n, *study], f"study-first-seed{seed}")
        continued = run([*tpe, *n, *study], f"study-second-seed{seed}")
        warm.append({"seed": seed,
                     "warm": {"steps_to_target": steps_to_reach(continued["curve"], target),
                              "best_eval_loss": continued["best_eval_loss"], "total_steps": continued["total_steps"]},
                     "cold": {"steps_to_target": steps_to_reach(cold["curve"], target),
                              "best_eval_loss": cold["best_eval_loss"], "total_steps": cold["total_steps"]}})
    print_json({"benchmark": "quality_per_compute --issue14", "machine": machine(), "num_samples": args.num_samples,
                "warm_trials": args.warm_trials,
                "wide_grid": {**{k: v for k, v in wide.items() if k != "curve"}, "within_1pct_target": target},
                "pruning": pruning, "warm_start": warm, "output": str(out)})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num_samples", type=int, default=24, help="TPE + ASHA trials per seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one TPE + ASHA sweep per sampler seed")
    ap.add_argument("--issue14", action="store_true", help="truthful pruning and warm starts (see above)")
    ap.add_argument("--warm_trials", type=int, default=12, help="--issue14: trials of each warm-start sweep")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-quality-"))
    if args.issue14:
        return issue14(args, out)

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
