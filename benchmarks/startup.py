"""The driver's three fixed costs (issue 24, item 7), measured on the real CLI and the embedded model.

One run launches `python -m orchestrator.run WORKLOAD --storage_path TMP --experiment_name startup --no-dashboard`
as a user would (this venv's Python, cwd and PYTHONPATH = the checkout under test), reads its merged
stdout/stderr line by line with each line's arrival time, waits for its exit, then reads every trial's
reports (result.json) from the experiment folder. All times are wall-clock (time.time()), relative to
`launched`, taken just before the process is spawned.

WORKLOAD (default): the embedded tiny model and its bundled pairs (no model or data flags: the product's
default), Optuna TPE, `--scheduler fifo --num_samples 6 --max_concurrent_trials 1`, and the per-trial shape
that BENCHMARKS.md section 1 (benchmarks/vs_seed.py) measured its "start-up / end / per-trial overhead"
with: `--num_epochs 1 --batch_size 1 --accumulation_steps 32 --eval_steps 1000000` (one evaluation and one
checkpoint per trial, at its end). `--shape default` keeps the product's own per-trial shape instead (5 epochs,
an evaluation and checkpoint every few steps); `--flags ...` appends more.

The three costs (each trial's reports carry `trial_started_at`, when its trainable function began, and
`reported_at`, when it called tune.report; a report's `train_s` is the training loop's time since the
previous report and `eval_s` the evaluation's):

1. launch -> first trial training (`launch_to_first_training_s`): from `launched` to the earliest moment a
   trial began its training loop. No report stamps that moment, so it is taken as
   `first report's reported_at - its train_s - its eval_s`: this is later than the loop's first step by the
   first report's checkpoint save and log line (tens of ms), i.e. a slight over-estimate. Its parts:
   - `to_model_line_s`: launch -> the driver prints `model: ...` (Python, the driver's imports, input
     checks, tokenization, the memory plan);
   - `to_trainable_start_s`: launch -> the first trial's trainable function begins (`trial_started_at`):
     adds ray.init, Tune's start, the coordinator actor, the trial actor's process and its imports;
   - `trainable_to_training_s`: then -> its training loop, of which `load_s` (the model's load and LoRA,
     the trial's own measure) is reported apart; the rest is the imports the trainable does itself
     (transformers' schedule, peft), the untrained model's evaluation and the optimizer's set-up.
2. last trial -> summary (`last_report_to_summary_s`): from the last report of any trial (max `reported_at`)
   to the arrival of the summary's first line (`=== Sweep summary ===`, orchestrator/summary.py) on stdout;
   `last_report_to_exit_s` runs on to the driver process's exit (when a shell's prompt returns;
   `output_closed_s` is when the last process holding its output let go, Ray's included).
3. per-trial overhead (`per_trial_overhead_s`): with trials one at a time (`--max_concurrent_trials 1`), what
   each trial after the first adds to the sweep's wall time beyond its own training and evaluation:
   `between_s` (previous trial's last report -> this trial's trainable start: Tune ends the old actor, asks
   Optuna, starts a new actor process that imports torch and the trainable) + `before_training_s`
   (trainable start -> training loop, as above) + `in_loop_s` (its reports' span less their train_s and
   eval_s: checkpoint saves, report calls). Median over trials 2..N. `span_overhead_s` cross-checks it:
   (last report - first trial's training start - every trial's train_s and eval_s) / (N - 1).
   `in_trial_s` is vs_seed's older figure, mean(time_total_s - sum(train_s)): inside the trial only, with
   its evaluation counted as overhead. With the default shape's single report per trial, `in_loop_s` is 0 by
   construction and that report's checkpoint save is counted in `before_training_s`.

`--probe` runs the same CLI through a wrapper (this file, `--driver-probe`: `orchestrator.run.main` with the
driver's steps wrapped by name as their modules load: ray.init, the input steps, the memory plan, the
coordinator, build_tuner, Tuner.fit, the coordinator's finish (the merge), checkpoint deletion, plots,
importances (study_report), ray.shutdown, render_summary, then the exit handlers), and samples the process
tree every 50 ms for each trial worker's appearance and its change into the trial's actor (`workers`). The
wrapper and the sampler cost a little; compare probed runs with probed runs. Steps that a checkout lacks or
names differently are simply not timed.

    python benchmarks/startup.py                               # this checkout, 1 run
    python benchmarks/startup.py --repo /tmp/old --repo . --runs 3      # alternating, medians per checkout
    python benchmarks/startup.py --probe
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if __name__ == "__main__" and "--driver-probe" in sys.argv:
    # the probe wrapper: the checkout under test comes from PYTHONPATH, never from this file's repo
    _LAUNCHED = float(os.environ.get("STARTUP_LAUNCHED", time.time()))
else:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SUMMARY_HEADER = "=== Sweep summary ==="
PROBE_PREFIX = "[startup-probe]"
WORKLOAD = ["--scheduler", "fifo", "--num_samples", "6", "--max_concurrent_trials", "1"]
VS_SEED_SHAPE = ["--num_epochs", "1", "--batch_size", "1", "--accumulation_steps", "32", "--eval_steps", "1000000"]
REPORT_KEYS = ("trial_started_at", "reported_at", "train_s", "eval_s", "load_s", "time_total_s", "step", "pid")


# -- running the CLI ----------------------------------------------------------------------------------------------
def run_cli(repo: Path, flags: list[str], storage: Path, probe: bool = False, log: Path | None = None) -> dict:
    """Launch the sweep in `repo` and collect (arrival time, line) for every output line, the exit time and code."""
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    entry = [str(Path(__file__).resolve()), "--driver-probe"] if probe else ["-m", "orchestrator.run"]
    argv = [sys.executable, "-u", *entry, *flags, "--storage_path", str(storage), "--experiment_name", "startup",
            "--no-dashboard"]
    lines: list[tuple[float, str]] = []
    launched = time.time()
    env["STARTUP_LAUNCHED"] = repr(launched)
    process = subprocess.Popen(argv, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sampler = ProcessSampler(process.pid, launched) if probe else None
    # the driver's own exit (a shell's prompt returns then); Ray's processes may hold the output pipe a little longer
    exit_times = []
    waiter = threading.Thread(target=lambda: (process.wait(), exit_times.append(time.time() - launched)), daemon=True)
    waiter.start()
    for raw in process.stdout:
        lines.append((time.time() - launched, raw.decode(errors="replace").rstrip("\n")))
    output_closed = time.time() - launched
    waiter.join()
    code, exited = process.returncode, exit_times[0]
    if sampler:
        sampler.stop()
    if log:
        log.write_text("".join(f"{at:9.3f} {line}\n" for at, line in lines))
    if code != 0:
        tail = "\n".join(line for _, line in lines[-20:])
        raise RuntimeError(f"{' '.join(argv[:6])} ... exited with {code}:\n{tail}")
    return {"launched": launched, "exited_s": exited, "output_closed_s": output_closed, "lines": lines,
            "workers": sampler.titles if sampler else []}


class ProcessSampler:
    """--probe only: every 50 ms, each descendant process's title (Ray's `ray::IDLE`, an actor's class...), so a
    trial worker's creation and the moment it became the trial's actor can be read back."""

    def __init__(self, pid: int, launched: float, interval_s: float = 0.05):
        import psutil

        self.root, self.launched, self.interval_s = psutil.Process(pid), launched, interval_s
        # {pid, title, created_s, first_seen_s}; created_s (psutil's create_time) rests on the boot time in whole
        # seconds, so it can be off by up to 1 s against time.time(): first_seen_s (within 50 ms) is the one to use
        self.titles: list[dict] = []
        self._seen: set = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                children = self.root.children(recursive=True)
            except psutil.Error:
                break
            now = time.time() - self.launched
            for child in children:
                try:
                    title = " ".join(child.cmdline())[:80]
                    key = (child.pid, title)
                    if key not in self._seen:
                        self._seen.add(key)
                        self.titles.append({"pid": child.pid, "title": title, "first_seen_s": round(now, 3),
                                            "created_s": round(child.create_time() - self.launched, 3)})
                except psutil.Error:
                    pass
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def read_reports(experiment: Path) -> list[list[dict]]:
    """Every trial's reports (result.json lines), the fields this benchmark reads."""
    trials = []
    for path in sorted(experiment.glob("*/result.json")):
        reports = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if reports:
            trials.append([{k: r.get(k) for k in REPORT_KEYS} for r in reports])
    return trials


# -- the analysis (pure: tests/test_startup_benchmark.py) --------------------------------------------------------
def first_line_at(lines: list[tuple[float, str]], start: str, after: float = -1.0) -> float | None:
    """Arrival time of the first line starting with `start` (ANSI colour codes and spaces ignored)."""
    for at, line in lines:
        if at >= after and _plain(line).startswith(start):
            return at
    return None


def _plain(line: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", line).strip()


def training_start(reports: list[dict]) -> float:
    """When the trial's training loop began: its first report less that report's training and evaluation."""
    first = reports[0]
    return first["reported_at"] - (first.get("train_s") or 0.0) - (first.get("eval_s") or 0.0)


def in_loop_s(reports: list[dict]) -> float:
    """The trial's reports' span not spent training or evaluating (checkpoint saves, report calls)."""
    work = sum((r.get("train_s") or 0.0) + (r.get("eval_s") or 0.0) for r in reports)
    return reports[-1]["reported_at"] - training_start(reports) - work


def launch_cost(trials: list[list[dict]], launched: float, lines: list[tuple[float, str]]) -> dict:
    first = min(trials, key=training_start)
    starts = first[0]
    trainable_start = starts["trial_started_at"] - launched
    training = training_start(first) - launched
    return {"launch_to_first_training_s": training,
            "to_model_line_s": first_line_at(lines, "model:"),
            "to_first_progress_line_s": first_line_at(lines, "trials: "),
            "to_trainable_start_s": trainable_start,
            "trainable_to_training_s": training - trainable_start,
            "first_trial_load_s": starts.get("load_s")}


def tail_cost(trials: list[list[dict]], launched: float, lines: list[tuple[float, str]], exited_s: float) -> dict:
    last = max(r["reported_at"] for t in trials for r in t) - launched
    summary = first_line_at(lines, SUMMARY_HEADER, after=last)
    marks = {"all_trials_ended_line": _first_containing(lines, "all trials ended", last),
             "checkpoints_line": first_line_at(lines, "checkpoints:", last),
             "summary_line": summary, "exit": exited_s}
    return {"last_report_to_summary_s": None if summary is None else summary - last,
            "last_report_to_exit_s": exited_s - last,
            "summary_to_exit_s": None if summary is None else exited_s - summary,
            "marks_after_last_report_s": {k: (None if v is None else round(v - last, 3)) for k, v in marks.items()}}


def _first_containing(lines, text: str, after: float) -> float | None:
    return next((at for at, line in lines if at >= after and text in line), None)


def per_trial_overhead(trials: list[list[dict]]) -> dict:
    """Trials in start order; what each after the first adds beyond its own training and evaluation."""
    ordered = sorted(trials, key=lambda t: t[0]["trial_started_at"])
    rows = []
    for k, reports in enumerate(ordered):
        row = {"before_training_s": training_start(reports) - reports[0]["trial_started_at"],
               "in_loop_s": in_loop_s(reports), "load_s": reports[0].get("load_s"),
               "in_trial_s": reports[-1]["time_total_s"] - sum(r.get("train_s") or 0.0 for r in reports)}
        if k:
            row["between_s"] = reports[0]["trial_started_at"] - ordered[k - 1][-1]["reported_at"]
            row["overhead_s"] = row["between_s"] + row["before_training_s"] + row["in_loop_s"]
        rows.append(row)
    overlapping = any(r.get("between_s", 0.0) < 0 for r in rows)  # trials ran at once: the gaps mean nothing
    later = rows[1:]
    work = sum((r.get("train_s") or 0.0) + (r.get("eval_s") or 0.0) for t in ordered for r in t)
    span = max(r["reported_at"] for t in ordered for r in t) - training_start(ordered[0])
    result = {"trials": len(ordered), "one_at_a_time": not overlapping,
              "in_trial_s": statistics.mean(r["in_trial_s"] for r in rows),
              "before_training_s": _median(r["before_training_s"] for r in later or rows),
              "in_loop_s": _median(r["in_loop_s"] for r in later or rows),
              "load_s": _median(r["load_s"] for r in later or rows if r["load_s"] is not None)}
    if later and not overlapping:
        result.update({"per_trial_overhead_s": _median(r["overhead_s"] for r in later),
                       "between_s": _median(r["between_s"] for r in later),
                       "span_overhead_s": (span - work) / len(later)})
    return result


def _median(values) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def analyse(run: dict, trials: list[list[dict]]) -> dict:
    lines, launched = run["lines"], run["launched"]
    record = {"launch": launch_cost(trials, launched, lines),
              "tail": tail_cost(trials, launched, lines, run["exited_s"]),
              "per_trial": per_trial_overhead(trials), "wall_s": run["exited_s"],
              "output_closed_s": run.get("output_closed_s")}
    probes = probe_phases(lines)
    if probes:
        record["probe"] = probes
        record["workers"] = worker_starts(run.get("workers", []), trials, launched)
    return _rounded(record)


def probe_phases(lines: list[tuple[float, str]]) -> list[dict]:
    """The wrapper's `[startup-probe] NAME START END` lines: each timed step, in start order."""
    phases = []
    for _, line in lines:
        if line.startswith(PROBE_PREFIX + " "):
            name, start, end = line[len(PROBE_PREFIX):].split()
            phases.append({"step": name, "start_s": float(start), "end_s": float(end),
                           "s": float(end) - float(start)})
    return sorted(phases, key=lambda p: p["start_s"])


def worker_starts(titles: list[dict], trials: list[list[dict]], launched: float) -> list[dict]:
    """For each trial's worker process (its reports' pid): when it was created and first seen as the trial's actor,
    beside when its trainable began."""
    rows = []
    for reports in sorted(trials, key=lambda t: t[0]["trial_started_at"]):
        pid = reports[0]["pid"]
        seen = [t for t in titles if t["pid"] == pid]
        actor = next((t for t in seen if t["title"].startswith("ray::") and "IDLE" not in t["title"]), None)
        rows.append({"pid": pid, "first_seen_s": seen[0]["first_seen_s"] if seen else None,
                     "created_s": seen[0]["created_s"] if seen else None,
                     "actor_seen_s": actor["first_seen_s"] if actor else None, "actor_title": actor and actor["title"],
                     "trainable_start_s": reports[0]["trial_started_at"] - launched,
                     "training_start_s": training_start(reports) - launched})
    return rows


def _rounded(value):
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


HEADLINES = {"launch -> first trial training": ("launch", "launch_to_first_training_s"),
             "last trial -> summary": ("tail", "last_report_to_summary_s"),
             "last trial -> exit": ("tail", "last_report_to_exit_s"),
             "per-trial overhead": ("per_trial", "per_trial_overhead_s"),
             "  between trials": ("per_trial", "between_s"),
             "  trainable start -> training": ("per_trial", "before_training_s"),
             "  in the loop (checkpoint, report)": ("per_trial", "in_loop_s"),
             "in-trial, vs_seed's (total - train_s)": ("per_trial", "in_trial_s"),
             "wall": ("wall_s",)}
TARGETS = {"launch -> first trial training": 5.0, "last trial -> summary": 2.0, "per-trial overhead": 0.25}


def pick(record: dict, path: tuple):
    for key in path:
        record = record.get(key) if isinstance(record, dict) else None
    return record


def medians(records: list[dict]) -> dict:
    """Each headline figure's median (and range) over runs."""
    out = {}
    for label, path in HEADLINES.items():
        values = [v for v in (pick(r, path) for r in records) if v is not None]
        if values:
            out[label] = {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
                          "max": round(max(values), 3), "runs": len(values)}
    return out


def probe_medians(records: list[dict]) -> dict:
    """--probe: each timed step's median seconds and median start (from launch), and the trial workers' start:
    process seen -> trainable start (boot, imports of Ray Tune, torch and the trainable), for the first trial and
    for the later ones."""
    steps: dict[str, list] = {}
    for record in records:
        for phase in record.get("probe", []):
            steps.setdefault(phase["step"], []).append(phase)
    out = {name: {"s": round(statistics.median(p["s"] for p in phases), 3),
                  "start_s": round(statistics.median(p["start_s"] for p in phases), 3)}
           for name, phases in steps.items()}
    boots = [(k, w["trainable_start_s"] - w["first_seen_s"])
             for r in records for k, w in enumerate(r.get("workers", [])) if w.get("first_seen_s") is not None]
    for label, chosen in (("worker boot, first trial", [b for k, b in boots if k == 0]),
                          ("worker boot, later trials", [b for k, b in boots if k > 0])):
        if chosen:
            out[label] = {"s": round(statistics.median(chosen), 3), "start_s": None}
    return out


def table(by_repo: dict[str, dict]) -> str:
    repos = list(by_repo)
    rows = [["", "target", *repos]]
    for label in HEADLINES:
        cells = []
        for repo in repos:
            figure = by_repo[repo].get(label)
            cells.append("-" if figure is None else
                         f"{figure['median']:.2f} s ({figure['min']:.2f}-{figure['max']:.2f})")
        target = TARGETS.get(label)
        rows.append([label, f"<= {target} s" if target else "", *cells])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


# -- the probe wrapper (runs inside the launched process) ---------------------------------------------------------
# module -> functions timed (where they exist in the checkout under test); a function is looked up by name when its
# caller runs, so wrapping the module attribute as the module loads times every call
PROBED = {
    "ray": ["init", "shutdown"],
    "orchestrator.inputs": ["resolve_model_dir", "check_publishing", "prepare_data", "trial_settings"],
    "orchestrator.memory_budget": ["plan_trial_memory"],
    "orchestrator.search_space": ["load_search_space"],
    "orchestrator.cluster_plan": ["plan_cluster"],
    "orchestrator.checkpoint_cleanup": ["delete_leftover_checkpoints"],
    "orchestrator.outcome": ["collect_outcome"],
    "orchestrator.ray_start": ["start_ray", "import_sweep_modules"],
    "orchestrator.sweep": ["run_sweep", "plan_cluster", "build_tuner", "delete_leftover_checkpoints",
                           "collect_outcome"],
    "orchestrator.plots": ["write_plots"],
    "orchestrator.study_report": ["study_report"],
    "orchestrator.summary": ["summary_head", "summary_tail"],
    "publishing.coordinator_actor": ["start_coordinator"],
}


def _say(name: str, start: float, end: float) -> None:
    print(f"{PROBE_PREFIX} {name} {start - _LAUNCHED:.3f} {end - _LAUNCHED:.3f}", flush=True)


def _timed(name: str, function):
    import functools

    if getattr(function, "_probed", False) or not callable(function):
        return function

    @functools.wraps(function)
    def timed(*args, **kwargs):
        start = time.time()
        try:
            result = function(*args, **kwargs)
        finally:
            _say(name, start, time.time())
        if name == "build_tuner":  # the Tuner: time its fit
            result.fit = _timed("tuner.fit", result.fit)
        if name == "start_coordinator":  # the coordinator's link: its end-of-sweep merge/publish and its stop
            for method in ("finish", "stop"):
                if hasattr(result, method):
                    setattr(result, method, _timed(f"coordinator.{method}", getattr(result, method)))
        return result

    timed._probed = True
    return timed


def _install_probes() -> None:
    import importlib.abc
    import importlib.machinery

    def patch(module) -> None:
        for attribute in PROBED[module.__name__]:
            if hasattr(module, attribute):
                setattr(module, attribute, _timed(attribute, getattr(module, attribute)))

    class PatchAfterImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name not in PROBED:
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or spec.loader is None:
                return None
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                patch(module)

            spec.loader.exec_module = exec_and_patch
            return spec

    sys.meta_path.insert(0, PatchAfterImport())


def driver_probe(argv: list[str]) -> int:
    import atexit

    _say("python_start", _LAUNCHED, time.time())
    marks = {}
    # registered first, so it runs last of the exit handlers (Ray's among them)
    atexit.register(lambda: _say("exit_handlers", marks["threads_joined"], time.time()))
    _install_probes()
    start = time.time()
    import orchestrator.run

    _say("import_orchestrator.run", start, time.time())
    start = time.time()
    code = orchestrator.run.main(argv)
    returned = time.time()
    _say("main", start, returned)
    # at exit Python first joins the threads that are not daemons, then runs the exit handlers (last registered
    # first), then tears the interpreter down
    lingering = [t.name for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()]
    print(f"{PROBE_PREFIX}-threads {' '.join(lingering) or '-'}", flush=True)

    def joined() -> None:  # registered last, so it runs first: the threads are joined by then
        marks["threads_joined"] = time.time()
        _say("join_threads", returned, marks["threads_joined"])

    atexit.register(joined)
    return code


# -- main -------------------------------------------------------------------------------------------------------
def measure(repo: Path, flags: list[str], probe: bool, keep: Path | None, index: int) -> dict:
    storage = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    load_before = os.getloadavg()[0]  # the machine is shared: a busy minute shows here
    log = keep / f"{repo.name}-{index}{'-probe' if probe else ''}.log" if keep else None
    run = run_cli(repo, flags, storage, probe=probe, log=log)
    trials = read_reports(storage / "startup")
    if not trials:
        raise RuntimeError(f"no trial reports under {storage / 'startup'}")
    record = {"repo": str(repo), "run": index, "probe": probe, "load_average_1m": [load_before, os.getloadavg()[0]],
              **analyse(run, trials)}
    if keep is None:
        import shutil

        shutil.rmtree(storage, ignore_errors=True)
    else:
        record["storage"] = str(storage)
    return record


def checkout_state(repo: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return f"{head}{' + uncommitted changes' if dirty else ''}"
    except OSError:
        return "unknown"


def main() -> None:
    from benchmarks.common import embedded_model_dir, print_json

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", action="append", type=Path,
                    help="checkout to run (repeat: runs alternate between them); default: this one")
    ap.add_argument("--runs", type=int, default=1, help="runs per checkout")
    ap.add_argument("--shape", choices=["vs_seed", "default"], default="vs_seed",
                    help="per-trial shape: vs_seed's (one evaluation per trial) or the product's default")
    ap.add_argument("--flags", nargs=argparse.REMAINDER, default=[], help="more flags for orchestrator.run (last)")
    ap.add_argument("--probe", action="store_true", help="time the driver's steps through the probe wrapper")
    ap.add_argument("--keep", type=Path, help="keep each run's output log and experiment folder; logs go here")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    repos = [r.resolve() for r in (args.repo or [Path(__file__).resolve().parents[1]])]
    flags = WORKLOAD + (VS_SEED_SHAPE if args.shape == "vs_seed" else []) + args.flags
    embedded_model_dir()  # built once, outside every timed run
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(args.runs):
        for repo in repos:
            record = measure(repo, flags, args.probe, args.keep, index)
            records.append(record)
            print(f"# {repo} run {index}: launch->training {record['launch']['launch_to_first_training_s']} s, "
                  f"last->summary {record['tail']['last_report_to_summary_s']} s, per-trial "
                  f"{record['per_trial'].get('per_trial_overhead_s')} s", file=sys.stderr, flush=True)
    by_repo = {str(repo): medians([r for r in records if r["repo"] == str(repo)]) for repo in repos}
    result = {"benchmark": "startup", "flags": flags, "checkouts": {str(r): checkout_state(r) for r in repos},
              "load_average": os.getloadavg(), "medians": by_repo, "runs": records}
    if args.probe:
        result["probe_medians"] = {str(repo): probe_medians([r for r in records if r["repo"] == str(repo)])
                                   for repo in repos}
    print_json(result)
    print(table(by_repo))
    for repo, steps in result.get("probe_medians", {}).items():
        print(f"\n{repo}: probed steps, median seconds (and median start after launch)")
        for name, figure in steps.items():
            start = "" if figure["start_s"] is None else f"  (at {figure['start_s']:.2f})"
            print(f"  {name:32s} {figure['s']:7.3f}{start}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    if "--driver-probe" in sys.argv:
        sys.exit(driver_probe([a for a in sys.argv[1:] if a != "--driver-probe"]))
    main()
