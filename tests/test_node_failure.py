"""A worker node dies mid-trial on a real two-node cluster (`ray start` head + worker on this machine):
its trial resumes from its last checkpoint on the surviving node and the sweep ends with the same best
configuration as an undisturbed run."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.ray_nodes import Cluster
from tests.tune_results import checkpoint_registered, reports, staged_results

pytestmark = pytest.mark.cluster  # every test here starts `ray start` nodes of its own
REPO = Path(__file__).resolve().parents[1]
GRID = "sampler: grid\nspace:\n  learning_rate: [1.0e-3, 2.0e-4]\n  r: [8]\n  alpha: [16]\n"


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """One two-node cluster for this module's tests (a `ray start` pair costs about 12 s here)."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_health_check_period_ms": "1000",
           "RAY_health_check_failure_threshold": "3", "LORA_SWEEP_CACHE": str(tmp_path_factory.mktemp("cache"))}
    env.pop("RAY_ADDRESS", None)
    cluster = Cluster(env)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(nodes):
    """The module's cluster with a live worker (an earlier test may have killed it): address, env, worker node."""
    nodes.ensure_worker()
    return nodes.address, nodes.env, nodes.worker


def sweep(address, env, tmp_path, name) -> subprocess.Popen:
    (tmp_path / "grid.yaml").write_text(GRID)
    argv = [sys.executable, "-m", "orchestrator.run", "--address", address, "--search", str(tmp_path / "grid.yaml"),
            "--scheduler", "fifo", "--num_epochs", "3", "--eval_steps", "10", "--max_failures", "3", "--storage_path",
            str(tmp_path / "results"), "--experiment_name", name]
    return subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def best_learning_rate(output: str) -> str:
    line = next(line for line in output.splitlines() if line.startswith("best trial:"))
    return next(word for word in line.split() if word.startswith("learning_rate="))


def test_a_killed_worker_nodes_trial_resumes_on_the_survivor(cluster, tmp_path):
    address, env, worker = cluster
    undisturbed = sweep(address, env, tmp_path, "undisturbed")
    calm, _ = undisturbed.communicate(timeout=400)
    assert undisturbed.returncode == 0, calm[-3000:]

    name = f"disturbed-{uuid.uuid4().hex[:6]}"  # its folder in the Ray session's staging area is this run's
    disturbed = sweep(address, env, tmp_path, name)
    experiment = tmp_path / "results" / name
    worker_pids = set()
    deadline = time.time() + 240
    victim = None
    while victim is None and time.time() < deadline:
        time.sleep(0.2)  # a trial trains for seconds only: kill at its second report, long before it ends
        worker_pids = {int(p) for p in subprocess.run(["ps", "-o", "pid=", "-g", str(worker.pid)],
                                                      capture_output=True, text=True).stdout.split()}
        # the driver's own copies of the results: Tune copies them to the experiment folder every 10 s or so
        for result in staged_results(name):
            rows = reports(result)
            if checkpoint_registered(rows) and rows[-1]["pid"] in worker_pids:
                victim = experiment / result.parent.name / "result.json"
    assert victim is not None, "no trial ran on the worker node"
    # The whole worker node: every process of its session (Ray's workers run in process groups of their own,
    # so killing the node's group alone leaves the trial training on until it notices its raylet is gone).
    for pid in worker_pids | {int(p) for p in subprocess.run(["ps", "-o", "pid=", "-g", str(worker.pid)],
                                                             capture_output=True, text=True).stdout.split()}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    out, _ = disturbed.communicate(timeout=600)
    assert disturbed.returncode == 0, out[-3000:]
    (tmp_path / "disturbed.out").write_text(out)
    # a handled fault reads as handled: one line, not Tune's traceback of the dead actor
    assert re.search(r"trial \w+ failed at step \d+ \(.*\); Tune resumes it from its checkpoint at step \d+", out)
    assert "Traceback" not in out, out[-3000:]
    rows = reports(victim)
    attempts = sorted({r["trial_started_at"] for r in rows})
    assert len(attempts) >= 2, "the killed trial was not restarted"
    first = [r["step"] for r in rows if r["trial_started_at"] == attempts[0]]
    resumed = [r["step"] for r in rows if r["trial_started_at"] == attempts[-1]]
    assert 10 < resumed[0] <= first[-1] + 10  # continued from a checkpoint of the first attempt, not from scratch
    assert best_learning_rate(out) == best_learning_rate(calm)


def finished(experiment: Path, final_step: int) -> dict[str, list[dict]]:
    done = {}
    for result in experiment.glob("*/result.json"):
        rows = reports(result)
        if rows and rows[-1]["step"] == final_step:
            done[result.parent.name] = rows
    return done


def terminated_in_snapshot(experiment: Path) -> set[str]:
    """The trials that Tune's latest snapshot in the experiment folder records as finished: what a `--resume` restores
    as done. (A result.json may show a trial's last report while the snapshot copied with it still has the trial
    running: Tune saves its state, then copies the folder, results that arrived meanwhile included.)"""
    snapshots = sorted(experiment.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    try:
        trials = json.loads(snapshots[-1].read_text())["trial_data"] if snapshots else []
    except (json.JSONDecodeError, OSError):  # caught mid-copy: look again at the next poll
        return set()
    return {state["relative_logdir"] for state in map(json.loads, (trial for trial, _ in trials))
            if state["status"] == "TERMINATED"}


def test_a_killed_driver_resumes_on_the_cluster(cluster, tmp_path, sweep_data):
    """Only the driver dies (the cluster lives on): `--resume` continues; finished trials are not rerun."""
    from trainables.lora_trial import TrainingSettings, TrialSettings, step_plan

    address, env, _ = cluster
    training = TrainingSettings(num_epochs=3, batch_size=8, accumulation_steps=1)
    # the sweep's training split is the session's: the embedded data, split with seed 0
    final_step = len(step_plan(TrialSettings(model_dir="", training=training), sweep_data.train))
    (tmp_path / "grid.yaml").write_text(GRID.replace("[1.0e-3, 2.0e-4]", "[1.0e-3, 5.0e-4, 2.0e-4, 1.0e-4]"))
    argv = [sys.executable, "-m", "orchestrator.run", "--address", address, "--search", str(tmp_path / "grid.yaml"),
            "--scheduler", "fifo", "--num_epochs", "3", "--storage_path", str(tmp_path / "results"),
            "--experiment_name", "driverless"]
    experiment = tmp_path / "results" / "driverless"
    # Tune snapshots the experiment (trial states and results, together) every 10 s or more by default; the trials
    # here finish within seconds of each other, so the kill could only land between two snapshots by luck.
    # A snapshot every second lets the test see a trial finished in a snapshot while others still run.
    snapshot_every_second = {**env, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    driver = subprocess.Popen(argv, env=snapshot_every_second, cwd=REPO, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not terminated_in_snapshot(experiment) and time.time() < deadline and driver.poll() is None:
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    done = terminated_in_snapshot(experiment)
    before = {name: rows for name, rows in finished(experiment, final_step).items() if name in done}
    assert before and len(before) == len(done) < 4, "the kill should land after one trial finished, before the last"

    resumed = subprocess.run([*argv, "--resume"], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming {experiment}" in resumed.stdout and "=== Sweep summary ===" in resumed.stdout
    after = finished(experiment, final_step)
    assert len(after) == 4
    for name, rows in before.items():
        assert after[name] == rows  # not run again
    assert (experiment / "publish.json").is_file()


FAILING_SWEEP = """
import json, sys
import ray
from ray import cloudpickle
from tests import faulty_trials
from orchestrator.config import load_config
from orchestrator.inputs import prepare_data, resolve_model_dir, trial_settings
from orchestrator.search_space import parse_search_space
from orchestrator.sweep import run_sweep
from publishing.publisher import PublishTarget
from publishing.setup import PublishSetup

config = load_config(sys.argv[1:])
ray.init(address=config.run.address, logging_level="ERROR")
cloudpickle.register_pickle_by_value(faulty_trials)  # the cluster's workers cannot import the tests
model_dir = resolve_model_dir(config)
space = parse_search_space({"sampler": "grid", "space": {"learning_rate": [1e-3, 1e-4], "r": [8], "alpha": [16]}}, "t")
outcome = run_sweep(config, space, trial_settings(config, model_dir), prepare_data(config, model_dir),
                    PublishSetup(PublishTarget()), trial_function=faulty_trials.fail_at_one_learning_rate)
print("OUTCOME " + json.dumps({"errored": outcome.errored, "finished": outcome.finished,
                               "best_lr": outcome.best_hyperparameters["learning_rate"]}))
"""


def test_a_trial_that_keeps_raising_is_reported_and_the_cluster_sweep_goes_on(cluster, tmp_path):
    address, env, _ = cluster
    done = subprocess.run([sys.executable, "-c", FAILING_SWEEP, "--address", address, "--num_epochs", "1",
                           "--scheduler", "fifo", "--max_failures", "2", "--storage_path", str(tmp_path / "results"),
                           "--experiment_name", "raising"], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    outcome = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("OUTCOME "))[8:])
    assert outcome == {"errored": 1, "finished": 1, "best_lr": 1e-3}
    [error] = (tmp_path / "results" / "raising").glob("*/error.txt")
    # tried 1 + --max_failures times, each failure recorded, then given up on
    assert error.read_text().count("RuntimeError: injected: this trial always fails") == 3
    assert "Failure # 3" in error.read_text() and "Failure # 4" not in error.read_text()
