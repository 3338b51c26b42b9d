"""Where the sweep's start-up goes: launch -> first trial training, phase by phase.

Runs the driver's own steps (orchestrator.run's main, unrolled) on the workload of
benchmarks/vs_seed.py and times each from the moment this process was created:
imports, config and input checks, tokenization, Ray's start, then Tune's start until
the first trial's trainable runs (from that trial's own report).

    python benchmarks/startup.py
"""

import sys
import tempfile
import time
from pathlib import Path

import psutil

LAUNCHED = psutil.Process().create_time()
marks = []


def mark(phase: str) -> None:
    marks.append((phase, time.time() - LAUNCHED))


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from orchestrator.config import load_config  # noqa: E402
from orchestrator.inputs import (check_publishing, prepare_data, resolve_model_dir,  # noqa: E402
                                 trial_settings)
from orchestrator.search_space import load_search_space  # noqa: E402
from orchestrator.sweep import run_sweep, start_ray  # noqa: E402

mark("python and the driver's imports")


def main() -> None:
    from benchmarks.common import embedded_model_dir, print_json, read_trials

    storage = tempfile.mkdtemp(prefix="bench-startup-")
    config = load_config(["--search", "seed_grid", "--scheduler", "fifo", "--load_model_dir", str(embedded_model_dir()),
                          "--tokenizer", "model", "--num_epochs", "1", "--batch_size", "1",
                          "--accumulation_steps", "32", "--eval_steps", "1000000", "--num_samples", "2",
                          "--storage_path", storage, "--experiment_name", "startup", "--no-dashboard"])
    space = load_search_space(config.search.search)
    model_dir = resolve_model_dir(config)
    mark("config and model checks")
    data = prepare_data(config, model_dir)
    settings = trial_settings(config, model_dir)
    publishing = check_publishing(config, model_dir)
    mark("tokenizer, data split and tokenization")
    start_ray(config)
    mark("ray.init (Ray Tune and Optuna imported meanwhile)")
    run_sweep(config, space, settings, data, publishing)
    first_trial = min(t["started_at"] for t in read_trials(Path(storage) / "startup")) - LAUNCHED
    marks.append(("Tune, the coordinator, trial workers' start and imports", first_trial))
    previous, phases = 0.0, []
    for phase, at in marks:
        phases.append({"phase": phase, "s": round(at - previous, 2), "at_s": round(at, 2)})
        previous = at
    print_json({"benchmark": "startup", "first_trial_training_at_s": round(first_trial, 2), "phases": phases})


if __name__ == "__main__":
    main()
