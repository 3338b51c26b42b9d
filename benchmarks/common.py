"""What the benchmarks share: the data both sides train on, running the product and the
baseline as separate processes (timed and memory-sampled from outside), and reading a
sweep's per-trial reports back from its experiment folder.

The analysis functions at the bottom are pure, so tests cover them.
"""

import glob
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SEED_SEQUENTIAL = Path(os.environ.get("SEED_SEQUENTIAL", REPO.parent / "shared" / "bench" / "seed_sequential.py"))


def machine() -> dict:
    import platform

    import torch

    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def embedded_model_dir() -> Path:
    from trainables.embedded_model import ensure_embedded_model

    return ensure_embedded_model()


def write_split(out_dir: Path, dataset: Path, eval_fraction: float = 0.15, seed: int = 0,
                repeats: int = 1) -> tuple[Path, Path]:
    """The orchestrator's own train/eval split of `dataset`, as JSONL files the baseline reads.

    `repeats` writes the training pairs that many times over: the baseline's one pass over it
    trains as many batches as the orchestrator's `--num_epochs repeats`.
    """
    from trainables.data import read_pairs, split_pairs

    train, held_out = split_pairs(read_pairs(dataset), eval_fraction, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_file, eval_file = out_dir / "train.jsonl", out_dir / "eval.jsonl"
    train_file.write_text("".join(json.dumps(row) + "\n" for row in train * repeats))
    eval_file.write_text("".join(json.dumps(row) + "\n" for row in held_out))
    return train_file, eval_file


class PeakMemory:
    """Samples a process and its descendants every 0.2 s: peak RSS of the root alone and of the whole tree."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.root_peak_mb = self.tree_peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = self.root.memory_info().rss
                tree = root + sum(_rss(p) for p in self.root.children(recursive=True))
            except psutil.NoSuchProcess:
                break
            self.root_peak_mb = max(self.root_peak_mb, root / 2**20)
            self.tree_peak_mb = max(self.tree_peak_mb, tree / 2**20)
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0


def run_process(argv: list[str], log_file: Path) -> dict:
    """Run a command to its end; wall time from launch to exit and peak memory, sampled from outside."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log_file, "w") as log:
        started = time.time()
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        memory = PeakMemory(process.pid)
        code = process.wait()
        ended = time.time()
        memory.stop()
    if code != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed with exit code {code}; see {log_file}")
    return {"started_at": started, "ended_at": ended, "wall_s": ended - started,
            "root_peak_rss_mb": round(memory.root_peak_mb, 1), "tree_peak_rss_mb": round(memory.tree_peak_mb, 1)}


def run_baseline(model_dir: Path, train_file: Path, eval_file: Path, out_dir: Path, threads: int = 0) -> dict:
    """The original miner's search (seed_sequential.py), every batch of `train_file` per combination."""
    argv = [PYTHON, str(SEED_SEQUENTIAL), "--model_dir", str(model_dir), "--data", str(train_file),
            "--eval_data", str(eval_file), "--search_share", "1.0", "--accumulation_steps", "32"]
    if threads:
        argv += ["--threads", str(threads)]
    log = out_dir / "baseline.log"
    run = run_process(argv, log)
    printed = json.loads(next(line for line in log.read_text().splitlines() if line.startswith("{")))
    printed["internal_wall_s"] = printed.pop("wall_s")  # from after its imports to its end
    return {**run, **printed}


def run_orchestrator(flags: list[str], out_dir: Path, name: str) -> dict:
    """`python -m orchestrator.run FLAGS` into out_dir/name; its timing, memory and every trial's reports."""
    storage = out_dir / "ray_results"
    argv = [PYTHON, "-m", "orchestrator.run", *flags, "--storage_path", str(storage), "--experiment_name", name,
            "--no-dashboard"]
    run = run_process(argv, out_dir / f"{name}.log")
    trials = read_trials(storage / name)
    first_start = min(t["started_at"] for t in trials)
    last_report = max(r["reported_at"] for t in trials for r in t["reports"])
    return {**run, "trials": trials, "experiment": str(storage / name),
            "startup_s": first_start - run["started_at"], "training_span_s": last_report - first_start,
            "tail_s": run["ended_at"] - last_report}


def read_trials(experiment: Path) -> list[dict]:
    """Each trial's hyperparameters and reports (result.json), from a finished experiment folder."""
    trials = []
    for path in sorted(glob.glob(str(experiment / "*" / "result.json"))):
        reports = [json.loads(line) for line in open(path) if line.strip()]
        if not reports:
            continue
        trials.append({
            "trial_id": reports[-1]["trial_id"], "config": reports[-1]["config"],
            "started_at": reports[-1]["trial_started_at"], "time_total_s": reports[-1]["time_total_s"],
            "train_s": sum(r["train_s"] for r in reports), "pid": reports[-1]["pid"],
            "reports": [{k: r[k] for k in ("step", "eval_loss", "reported_at", "tokens_per_s", "train_s",
                                            "peak_rss_mb")} for r in reports],
        })
    return trials


def print_json(record: dict) -> None:
    print(json.dumps(record, indent=2, default=str))


# -- pure analysis ----------------------------------------------------------------------------
def progress(trials: list[dict]) -> list[tuple[int, float]]:
    """(training steps spent so far by all trials, best eval loss so far) after every report, in time order.

    A report's steps are what its trial trained since its previous report, so stopped and running
    trials count exactly what they cost."""
    events = []
    for trial in trials:
        previous = 0
        for report in trial["reports"]:
            events.append((report["reported_at"], report["step"] - previous, report["eval_loss"]))
            previous = report["step"]
    spent, best, curve = 0, math.inf, []
    for _, steps, loss in sorted(events):
        spent += steps
        best = min(best, loss)
        curve.append((spent, best))
    return curve


def best_within(curve: list[tuple[int, float]], budget: int) -> float:
    """The best eval loss reached having spent at most `budget` training steps."""
    return min((best for spent, best in curve if spent <= budget), default=math.inf)


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """Training steps spent when the best eval loss first reached `target` (None: never)."""
    return next((spent for spent, best in curve if best <= target), None)


def total_steps(trials: list[dict]) -> int:
    return sum(t["reports"][-1]["step"] for t in trials)
