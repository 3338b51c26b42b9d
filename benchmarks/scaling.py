"""Benchmark 6: sweep wall time against the number of workers, as a share of ideal.

Measured: the seed grid of benchmark 1 (12 trials, the tiny model, one CPU core per trial)
with `--max_concurrent_trials` 1 and 2 on this machine.
Simulated wider: the orchestrator's Tune set-up (OptunaSearch over the default space, FIFO,
reused actors) with a trainable that sleeps instead of training, on a Ray started with as
many logical CPUs as workers. It isolates what the driver adds per trial as the cluster
grows: compute is ideal by construction, so wall time over ideal is Ray/Tune/Optuna overhead.

    python benchmarks/scaling.py [--workers 1 2] [--simulated 1 2 4 8 16] [--sim_trials 32]
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import embedded_model_dir, machine, print_json, run_orchestrator  # noqa: E402

REPORTS, REPORT_EVERY_S = 8, 0.25  # a simulated trial: 8 evaluations, 2 s of "training"


def measured(workers: int, out: Path) -> dict:
    run = run_orchestrator(["--search", "seed_grid", "--scheduler", "fifo", "--load_model_dir",
                            str(embedded_model_dir()), "--tokenizer", "model", "--num_epochs", "1", "--batch_size", "1",
                            "--accumulation_steps", "32", "--eval_steps", "1000000",
                            "--max_concurrent_trials", str(workers)], out, f"workers-{workers}")
    return {"workers": workers, "wall_s": round(run["wall_s"], 1), "training_span_s": round(run["training_span_s"], 1),
            "startup_s": round(run["startup_s"], 1)}


def sleeping_trial(config: dict) -> None:
    from ray import tune

    started = time.time()
    for step in range(1, REPORTS + 1):
        time.sleep(REPORT_EVERY_S)
        tune.report({"eval_loss": config["learning_rate"] * 1e3 / step, "step": step, "trial_started_at": started,
                     "reported_at": time.time()})


def simulated(workers: int, trials: int) -> dict:
    import ray
    from ray import tune

    from orchestrator.search_space import load_search_space, optuna_search

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # no experiment banner on stdout, which carries the JSON
    space = load_search_space("default")
    ray.init(address="local", num_cpus=workers, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(sleeping_trial, {"cpu": 1}),
            tune_config=tune.TuneConfig(metric="eval_loss", mode="min", num_samples=trials,
                                        max_concurrent_trials=workers, reuse_actors=True,
                                        search_alg=optuna_search(space, 0, "eval_loss", "min")),
            run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(prefix="bench-scaling-"), verbose=0))
        started = time.perf_counter()
        results = tuner.fit()
        wall = time.perf_counter() - started
    finally:
        ray.shutdown()
    assert all(r.error is None for r in results), "a simulated trial failed"
    # from the first trial's start to the last report: the sweep once its workers are up
    span = max(r.metrics["reported_at"] for r in results) - min(r.metrics["trial_started_at"] for r in results)
    ideal = trials * REPORTS * REPORT_EVERY_S / workers
    return {"workers": workers, "trials": trials, "fit_wall_s": round(wall, 1), "span_s": round(span, 1),
            "ideal_s": ideal, "efficiency": round(ideal / wall, 3), "span_efficiency": round(ideal / span, 3)}


def speedups(base: dict, row: dict) -> dict:
    """Speed-up over `base`, and that speed-up as a share of ideal (linear in the number of workers)."""
    ideal = row["workers"] / base["workers"]
    wall, training = base["wall_s"] / row["wall_s"], base["training_span_s"] / row["training_span_s"]
    return {"speedup": round(wall, 3), "efficiency": round(wall / ideal, 3),
            "training_speedup": round(training, 3), "training_efficiency": round(training / ideal, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--simulated", type=int, nargs="*", default=[1, 2, 4, 8, 16])
    ap.add_argument("--sim_trials", type=int, default=32)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-scaling-"))
    real = [measured(w, out) for w in args.workers]
    for row in real:  # against the first run, with the fewest workers
        row.update(speedups(real[0], row))
    sim = [simulated(w, args.sim_trials) for w in args.simulated]
    print_json({"benchmark": "scaling", "machine": machine(), "measured": real, "simulated": sim,
                "output": str(out)})


if __name__ == "__main__":
    main()
