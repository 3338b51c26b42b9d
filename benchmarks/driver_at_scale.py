"""Benchmark 6b: the product's driver at 64 and 128 concurrent trials, with its experiment in S3.

The driver is the product's own `run_sweep`: Optuna behind the time-budget searcher, ASHA, the live table,
each trial deleting its stale checkpoints, the PublishCallback feeding the coordinator actor, and the
experiment in `s3://` (a moto S3 server on 127.0.0.1). Only the trial differs: it sleeps instead of training.
Each trial reports as `lora_trainable` does, every `--interval` seconds (a compressed few minutes of training),
each report with a checkpoint that is a real LoRA adapter of the embedded model, saved and uploaded by Tune.

Ray gets one logical CPU per concurrent trial, so every trial has its own worker process on this machine.

Measured:
- what trials wait for the driver: the time `tune.report` blocks after the checkpoint is uploaded (the driver
  takes the result, runs the scheduler, searcher and callbacks, and lets the trial go on), and the gap from one
  trial's end to the start of the next on its slot (suggest, start, reuse the actor); as a share of the trials'
  own time, that is what the driver adds to the sweep's wall time;
- the driver process's CPU seconds per report and per trial, and its memory;
- Tune's experiment-state snapshots (save, then upload to S3, timed in the driver) and its checkpoint deletions;
- S3 requests by kind, from the server's log;
- the coordinator's lag from a trial's report to its verdict on it (the product's own figure, in the summary).

    python benchmarks/driver_at_scale.py --concurrent 64 128 [--interval 3] [--rounds 3] [--storage s3|local]
"""

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import embedded_model_dir, machine, print_json  # noqa: E402

REPORTS = 10      # a trial that is never stopped reports this often (ASHA's max_t)
REAL_INTERVAL_S = 180.0  # what --interval stands for: a report every 3 minutes of real training
BUCKET = "bench"


def start_s3(log_path: Path) -> tuple[subprocess.Popen, dict]:
    """moto's S3 server on 127.0.0.1, logging each request; the environment that points clients at it."""
    import socket
    import urllib.request

    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=log_path.open("w"), start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
            break
        except OSError:
            time.sleep(0.2)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                 aws_secret_access_key="bench").create_bucket(Bucket=BUCKET)
    return server, env


def s3_requests(log_path: Path) -> Counter:
    """Requests by kind from the server's log: checkpoint files, checkpoint deletions, experiment state, other."""
    kinds = Counter()
    for line in log_path.read_text().splitlines():
        match = re.search(r'"(GET|PUT|POST|DELETE|HEAD) (\S+)', line)
        if not match:
            continue
        method, path = match.groups()
        if "checkpoint_" in path:
            kinds[f"checkpoint {method}"] += 1
        elif "experiment_state" in path or "searcher" in path or "tuner.pkl" in path or "trainable.pkl" in path:
            kinds[f"experiment state {method}"] += 1
        elif "result.json" in path or "progress.csv" in path or "params." in path or "events.out" in path:
            kinds[f"trial results {method}"] += 1
        else:
            kinds[f"other {method}"] += 1
    return kinds


def real_adapter_checkpoint(folder: Path) -> Path:
    """A LoRA checkpoint of the embedded model as lora_trainable writes it (trained for one report's steps)."""
    from orchestrator.config import load_config
    from orchestrator.inputs import prepare_data, trial_settings
    from trainables.lora_trial import train_lora

    config = load_config(["--eval_steps", "2", "--batch_size", "4", "--accumulation_steps", "1"])
    settings = trial_settings(config, embedded_model_dir())
    data = prepare_data(config, embedded_model_dir())

    class Enough(Exception):
        pass

    def keep_first(metrics, checkpoint_dir):
        shutil.copytree(checkpoint_dir, folder)
        raise Enough

    try:
        train_lora({"learning_rate": 1e-3, "r": 8, "alpha": 16}, settings, data, keep_first)
    except Enough:
        pass
    return folder


def simulated_loss(config: dict, report: int) -> float:
    """A learning curve whose floor depends on the hyperparameters, so ASHA has something to stop."""
    floor = 1.0 + 0.3 * (math.log10(config["learning_rate"]) + 3.5) ** 2 + 0.05 * abs(math.log2(config["alpha"] / config["r"]))
    return floor + 2.0 * math.exp(-report / 3)


def sleeping_trial_factory(interval_s: float, reports: int, adapter: str, events: str):
    def sleeping_trial(config: dict, settings, data) -> None:
        """lora_trainable's reports (metrics, a checkpoint each time), with sleep for the training."""
        import json
        import shutil
        import tempfile
        import time

        from ray import tune
        from ray.train._internal.session import get_session

        from trainables.checkpoint_retention import GRACE_S, Retention

        trial_id = tune.get_context().get_trial_id()
        storage = get_session().storage
        upload = storage.persist_current_checkpoint
        uploaded_s = [0.0]

        def timed_upload(checkpoint):  # the checkpoint's upload is the worker's, not the driver's: timed apart
            begun = time.perf_counter()
            try:
                return upload(checkpoint)
            finally:
                uploaded_s[0] = time.perf_counter() - begun

        storage.persist_current_checkpoint = timed_upload
        # as lora_trainable: the trial deletes its own stale checkpoints, after a grace compressed as its reports are
        retention = Retention(grace_s=GRACE_S * interval_s / REAL_INTERVAL_S)
        started = time.time()
        with open(events, "a") as out:
            out.write(json.dumps({"trial": trial_id, "event": "start", "at": started}) + "\n")
        for report in range(1, reports + 1):
            time.sleep(interval_s)
            folder = tempfile.mkdtemp(prefix="ckpt-")
            shutil.copytree(adapter, folder, dirs_exist_ok=True)
            reported_at = time.time()
            with open(events, "a") as out:  # written first: a trial that ASHA stops never returns from this report
                out.write(json.dumps({"trial": trial_id, "event": "report", "report": report, "at": reported_at}) + "\n")
            # every evaluation scores the whole set here (--eval_steps), so rank_loss, what Tune ranks by, is eval_loss
            tune.report({"eval_loss": simulated_loss(config, report), "rank_loss": simulated_loss(config, report),
                         "step": report * settings.training.eval_steps,
                         "train_loss": simulated_loss(config, report) + 0.1, "tokens_per_s": 1000.0,
                         "trial_started_at": started, "reported_at": reported_at},
                        checkpoint=tune.Checkpoint.from_directory(folder))
            returned_at = time.time()
            retention.saved_checkpoint(tune.get_checkpoint(), simulated_loss(config, report))
            retention_s = time.time() - returned_at
            shutil.rmtree(folder, ignore_errors=True)
            with open(events, "a") as out:
                out.write(json.dumps({"trial": trial_id, "event": "returned", "report": report, "at": reported_at,
                                      "step": report * settings.training.eval_steps,
                                      "returned_at": returned_at, "upload_s": uploaded_s[0],
                                      "retention_s": retention_s}) + "\n")

    return sleeping_trial


class Sampler:
    """The driver's (and the head processes') CPU time and memory, sampled once a second in this process."""

    def __init__(self):
        import psutil

        self.me = psutil.Process()
        self.peak_rss_mb, self.rss_mb, self.cpu = 0.0, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(1.0):
            rss = self.me.memory_info().rss / 2**20
            self.rss_mb.append((time.time(), rss))
            cpu = self.me.cpu_times()
            self.cpu.append((time.time(), cpu.user + cpu.system))
            self.peak_rss_mb = max(self.peak_rss_mb, rss)

    def __enter__(self):
        self.cpu0 = self.me.cpu_times()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        cpu = self.me.cpu_times()
        self.cpu_s = (cpu.user - self.cpu0.user) + (cpu.system - self.cpu0.system)


def head_processes_cpu() -> dict:
    """CPU seconds of Ray's head processes and the coordinator actor so far."""
    import psutil

    found = Counter()
    for p in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        try:
            name, cmd = p.info["name"] or "", " ".join(p.info["cmdline"] or [])
            cpu = p.info["cpu_times"]
            if cpu is None:
                continue
            total = cpu.user + cpu.system
            if "gcs_server" in name:
                found["gcs_server"] += total
            elif name == "raylet" or "/raylet" in cmd.split(" ")[0]:
                found["raylet"] += total
            elif "CoordinatorActor" in cmd or "CoordinatorActor" in name:
                found["coordinator actor"] += total
            elif "moto_server" in cmd:
                found["s3 server"] += total
        except Exception:  # a process gone meanwhile
            continue
    return dict(found)


class DriverTimers:
    """Timers around the driver's experiment-state snapshots and checkpoint deletions (Ray's private hooks,
    patched in this benchmark only)."""

    def __init__(self):
        import ray.train._internal.checkpoint_manager as checkpoint_manager
        from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

        from ray.tune.execution.tune_controller import TuneController

        self.snapshots, self.forced, self.deletions, self.results, self.suggestions = [], 0, [], [], []
        timers = self
        on_result, update_queue = TuneController._on_training_result, TuneController._update_trial_queue

        def timed_on_result(controller, trial, result):  # all a result costs the loop: scheduler, searcher, callbacks
            begun = time.perf_counter()
            on_result(controller, trial, result)
            timers.results.append(time.perf_counter() - begun)

        def timed_update_queue(controller, *args, **kwargs):  # a new trial: the searcher's suggestion
            begun = time.perf_counter()
            try:
                return update_queue(controller, *args, **kwargs)
            finally:
                timers.suggestions.append(time.perf_counter() - begun)

        TuneController._on_training_result = timed_on_result
        TuneController._update_trial_queue = timed_update_queue
        sync_up = _ExperimentCheckpointManager.sync_up_experiment_state
        delete = checkpoint_manager._delete_fs_path

        def timed_sync_up(manager, save_fn, force=False, wait=False):
            saved = []

            def timed_save():
                begun = time.perf_counter()
                save_fn()
                saved.append(time.perf_counter() - begun)

            forced = force or manager._should_force_sync_up
            begun, at = time.perf_counter(), time.time()
            sync_up(manager, timed_save, force=force, wait=wait)
            if saved:  # it was due (or forced): a snapshot was written and its upload launched
                timers.snapshots.append({"total_s": time.perf_counter() - begun, "save_s": saved[0], "at": at})
                timers.forced += forced

        def timed_delete(fs, fs_path):
            begun = time.perf_counter()
            delete(fs=fs, fs_path=fs_path)
            timers.deletions.append(time.perf_counter() - begun)

        _ExperimentCheckpointManager.sync_up_experiment_state = timed_sync_up
        checkpoint_manager._delete_fs_path = timed_delete


def summarize_waits(events: list[dict], concurrent: int, interval_s: float) -> dict:
    """What trials waited on the driver, against the trials' own time (reports x interval)."""
    reports = [e for e in events if e["event"] == "report"]
    returned = [e for e in events if e["event"] == "returned"]
    starts = sorted(e["at"] for e in events if e["event"] == "start")
    waits = [max(0.0, e["returned_at"] - e["at"] - e["upload_s"]) for e in returned]
    uploads = [e["upload_s"] for e in returned]
    retention = [e["retention_s"] for e in returned]
    # A trial ends at its last report (the driver then finishes or stops it), and the slot it frees is taken by the
    # next trial to start: the k-th end pairs with the (N+k)-th start.
    last_report: dict[str, float] = {}
    for e in reports:
        last_report[e["trial"]] = max(last_report.get(e["trial"], 0.0), e["at"])
    ends = sorted(last_report.values())
    gaps = [max(0.0, start - end) for start, end in zip(starts[concurrent:], ends)]
    own = len(reports) * interval_s
    return {"reports": len(reports), "trials": len(starts),
            "wait_per_report_s": {"median": round(statistics.median(waits), 4), "p99": round(_p(waits, 99), 4),
                                  "max": round(max(waits), 3)},
            "upload_per_report_s": {"median": round(statistics.median(uploads), 4), "max": round(max(uploads), 3)},
            "trial_deletes_stale_s": {"median": round(statistics.median(retention), 4), "max": round(max(retention), 3)},
            "gap_between_trials_s": ({"median": round(statistics.median(gaps), 3), "max": round(max(gaps), 3)}
                                     if gaps else None),
            "driver_share_of_trial_time": round((sum(waits) + sum(gaps)) / own, 5)}


def lag_after_upload(lag, events: list[dict], snapshots: list[dict], since: float = 0.0) -> dict | None:
    """The coordinator's lag counted from when the trial's checkpoint was stored (its report reached Tune): the
    lag the product reports, which starts before the upload, less the upload the trial timed. Also: how many of the
    results later than 1 s reached Tune within 15 s after the start of an experiment snapshot."""
    returned = {f"{e['trial']}@{e['step']}": e for e in events if e["event"] == "returned"}
    lags = [(max(0.0, lag_s - returned[key]["upload_s"]), returned[key]["at"] + returned[key]["upload_s"])
            for key, lag_s in (lag.recent if lag else []) if key in returned]
    lags = [(lag_s, at) for lag_s, at in lags if at >= since]
    if not lags:
        return None
    late = [at for lag_s, at in lags if lag_s > 1.0]
    near_snapshot = sum(any(0 <= at - s["at"] <= 15 for s in snapshots) for at in late)
    values = [lag_s for lag_s, _ in lags]
    return {"results": len(values), "median": round(statistics.median(values), 3), "p99": round(_p(values, 99), 3),
            "worst": round(max(values), 3), "over_1s": len(late), "over_1s_near_a_snapshot": near_snapshot}


def _p(values: list[float], q: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def run_at(concurrent: int, rounds: int, interval_s: float, adapter: Path, work: Path, storage: str = "s3") -> dict:
    import ray
    from ray import cloudpickle

    from orchestrator.config import load_config
    from orchestrator.inputs import check_publishing, prepare_data, trial_settings
    from orchestrator.search_space import load_search_space
    from orchestrator.sweep import run_sweep
    from trainables.lora_trial import planned_reports, step_plan

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import this script
    s3_log = work / f"s3-{concurrent}.log"
    server = None
    if storage == "s3":
        server, env = start_s3(s3_log)
        os.environ.update(env)
    events = work / f"events-{concurrent}.jsonl"
    trials = concurrent * rounds
    try:
        model = embedded_model_dir()
        where = f"s3://{BUCKET}/sweeps" if storage == "s3" else str(work / "sweeps")
        base = ["--storage_path", where, "--experiment_name", f"scale-{concurrent}-{storage}",
                "--num_samples", str(trials), "--max_concurrent_trials", str(concurrent), "--seed", "0"]
        probe = load_config(base)
        data = prepare_data(probe, model)
        # --eval_steps for REPORTS reports over the embedded data, so ASHA's max_t is REPORTS as in the trial
        eval_steps = math.ceil(len(step_plan(trial_settings(probe, model), data.train)) / REPORTS)
        config = load_config([*base, "--eval_steps", str(eval_steps)])
        settings = trial_settings(config, model)
        assert planned_reports(settings, data.train) == REPORTS
        ray.init(address="local", num_cpus=concurrent, include_dashboard=False, logging_level="ERROR",
                 log_to_driver=False)
        timers = DriverTimers()
        head0 = head_processes_cpu()
        with Sampler() as sampler:
            begun = time.time()
            outcome = run_sweep(config, load_search_space(config.search.search), settings, data,
                                check_publishing(config, model),
                                trial_function=sleeping_trial_factory(interval_s, REPORTS, str(adapter), str(events)))
            wall = time.time() - begun
        head = {k: round(v - head0.get(k, 0.0), 1) for k, v in head_processes_cpu().items()}
        ray.shutdown()
    finally:
        if server is not None:
            server.kill()
            server.wait()
    rows = [json.loads(line) for line in events.read_text().splitlines()]
    waits = summarize_waits(rows, concurrent, interval_s)
    lag = outcome.publish.result_lag
    report_times = sorted(e["at"] for e in rows if e["event"] == "report")
    first_start = min(e["at"] for e in rows if e["event"] == "start")
    # steady state: every slot has its worker, until the last report (not the start-up, merge and summary)
    steady = (sorted(e["at"] for e in rows if e["event"] == "start")[concurrent - 1], report_times[-1])
    rss = [r for t, r in sampler.rss_mb if steady[0] <= t <= steady[1]]
    cpu = [c for t, c in sampler.cpu if steady[0] <= t <= steady[1]]
    steady_reports = sum(steady[0] <= t <= steady[1] for t in report_times)
    steady_trials = sum(steady[0] <= e["at"] <= steady[1] for e in rows if e["event"] == "start")
    return {
        "concurrent": concurrent, "trials": trials, "interval_s": interval_s, "max_reports": REPORTS,
        "finished": outcome.finished, "stopped_early": outcome.stopped_early, "errored": outcome.errored,
        "wall_s": round(wall, 1), "workers_up_s": round(steady[0] - first_start, 1),
        "steady_s": round(steady[1] - steady[0], 1),
        "reports_per_s": round(steady_reports / (steady[1] - steady[0]), 1),
        **waits,
        "driver_cpu_s": round(sampler.cpu_s, 1),
        # in the steady state: the CPU share of one core, and per report (trials starting then are counted in)
        "driver_cpu_share_steady": round((cpu[-1] - cpu[0]) / (steady[1] - steady[0]), 3),
        "driver_cpu_ms_per_report_steady": round(1000 * (cpu[-1] - cpu[0]) / steady_reports, 1),
        "trials_started_steady": steady_trials,
        "driver_rss_mb": {"after_start": round(rss[0], 0) if rss else None, "peak": round(sampler.peak_rss_mb, 0)},
        "driver_cpu_s_per_trial_whole_run": round(sampler.cpu_s / trials, 3),
        "driver_rss_growth_mb_per_trial_steady": (round((rss[-1] - rss[0]) / steady_trials, 2)
                                                  if len(rss) > 1 and steady_trials else None),
        "head_cpu_s": head,
        "snapshots": {"count": len(timers.snapshots), "forced": timers.forced,
                      "save_s_median": round(statistics.median([s["save_s"] for s in timers.snapshots]), 3)
                      if timers.snapshots else None,
                      "total_s_sum": round(sum(s["total_s"] for s in timers.snapshots), 2),
                      "total_s_max": round(max((s["total_s"] for s in timers.snapshots), default=0.0), 3)},
        "driver_per_result_s": {"count": len(timers.results), "median": round(statistics.median(timers.results), 4),
                                "p99": round(_p(timers.results, 99), 4), "sum": round(sum(timers.results), 1)}
        if timers.results else None,
        "driver_per_suggestion_s": {"count": len(timers.suggestions),
                                    "median": round(statistics.median(timers.suggestions), 4),
                                    "sum": round(sum(timers.suggestions), 1)} if timers.suggestions else None,
        "checkpoint_deletions": {"count": len(timers.deletions), "sum_s": round(sum(timers.deletions), 2),
                                 "median_s": round(statistics.median(timers.deletions), 4) if timers.deletions else None},
        "storage": storage,
        "s3_requests": dict(sorted(s3_requests(s3_log).items())) if server is not None else None,
        "coordinator_lag_s": {"results": lag.count, "median": round(lag.median_s, 3), "worst": round(lag.worst_s, 3)}
        if lag else None,
        "coordinator_lag_after_upload_s": lag_after_upload(lag, rows, timers.snapshots),
        # once every slot's worker is up (128 workers starting on 2 cores starve everything else for a while)
        "coordinator_lag_after_upload_s_steady": lag_after_upload(lag, rows, timers.snapshots, since=steady[0]),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrent", type=int, nargs="*", default=[64, 128])
    ap.add_argument("--rounds", type=int, default=3, help="trials per slot: num_samples = rounds x concurrent")
    ap.add_argument("--interval", type=float, default=3.0,
                    help="seconds between a trial's reports (standing for a few minutes of training)")
    ap.add_argument("--storage", choices=["s3", "local"], default="s3",
                    help="s3: a moto S3 server on 127.0.0.1 (its requests are counted); local: a folder")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    work = Path(args.out or tempfile.mkdtemp(prefix="bench-driver-"))
    work.mkdir(parents=True, exist_ok=True)
    adapter = real_adapter_checkpoint(work / "adapter")
    rows = []
    for n in args.concurrent:
        rows.append(run_at(n, args.rounds, args.interval, adapter, work, args.storage))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print_json({"benchmark": "driver_at_scale", "machine": machine(), "adapter_kb": round(
        sum(f.stat().st_size for f in adapter.rglob("*") if f.is_file()) / 1024, 1), "rows": rows, "output": str(work)})


if __name__ == "__main__":
    main()
