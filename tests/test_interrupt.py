"""Ctrl-C is an interruption, not a success: non-zero exit, nothing merged or published, the exact --resume
command printed; running that command finishes the sweep. A driver killed outright resumes too, and a trial that had
finished is not run again. (A killed worker node, and a driver killed on a cluster: tests/test_s3_storage.py.)"""

import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.config import ConfigError
from orchestrator.state_seal import check_sealed
from tests.tune_results import reports

REPO = Path(__file__).resolve().parents[1]


def first_result_written(experiment: Path) -> bool:
    return any(p.stat().st_size > 0 for p in experiment.glob("*/result.json"))


@pytest.mark.slow
def test_ctrl_c_interrupts_publishes_nothing_and_tells_how_to_resume(tmp_path):
    argv = ["--num_samples", "4", "--num_epochs", "3", "--storage_path", str(tmp_path), "--no-dashboard",
            "--experiment_name", "stopped"]
    experiment = tmp_path / "stopped"
    # Tune copies results to the experiment folder at its snapshots, every 10 s or more by default: a snapshot every
    # second lets the test see the first report while the trials are still far from done
    snapshot_every_second = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.run", *argv], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True, env=snapshot_every_second)
    try:
        deadline = time.time() + 240
        while not first_result_written(experiment) and time.time() < deadline and driver.poll() is None:
            time.sleep(0.2)
        assert first_result_written(experiment), "no trial reported in time"
        driver.send_signal(signal.SIGINT)  # what Ctrl-C sends
        out, _ = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130, out[-3000:]
    assert "=== Sweep interrupted ===" in out and "=== Sweep summary ===" not in out
    assert "Tuner.restore" not in out  # Ray's hint is replaced by ours
    assert not (experiment / "best_model").exists() and not (experiment / "publish.json").exists()
    statuses = [row["status"] for row in csv.DictReader((experiment / "trials.csv").open())]
    assert "interrupted" in statuses, statuses
    assert json.loads((experiment / "lora_sweep.json").read_text())["status"] == "interrupted"

    # Tune's state carries this machine's seal; a copy with one sealed file changed is refused, naming it
    check_sealed(str(experiment))
    tampered = tmp_path / "tampered"
    shutil.copytree(experiment, tampered)
    searcher_state = next(tampered.glob("searcher-state-*.pkl"))
    searcher_state.write_bytes(searcher_state.read_bytes() + b"\0")
    with pytest.raises(ConfigError, match=f"{searcher_state.name} in .* do(es)? not match the seal"):
        check_sealed(str(tampered))
    shutil.rmtree(tampered)

    command = out[out.index("to continue from the last checkpoints:"):].splitlines()[1].strip()
    assert command == shlex.join(["python", "-m", "orchestrator.run", *argv[:-2], "--resume",
                                  "--experiment_name", "stopped"])
    resumed = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=REPO, capture_output=True, text=True,
                             timeout=400)
    # (trials.csv says why each trial ended, should the resumed sweep not finish)
    assert resumed.returncode == 0, (resumed.stdout[-3000:] + resumed.stderr[-3000:]
                                     + (experiment / "trials.csv").read_text())
    assert "=== Sweep summary ===" in resumed.stdout
    statuses = [row["status"] for row in csv.DictReader((experiment / "trials.csv").open())]
    assert len(statuses) == 4 and "interrupted" not in statuses
    assert (experiment / "best_model").is_dir() and (experiment / "publish.json").is_file()
    check_sealed(str(experiment))  # the resumed sweep sealed its own state and carried the first session's over


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


@pytest.mark.slow
def test_a_killed_driver_resumes_and_runs_no_finished_trial_again(model_dir, sweep_data, tmp_path):
    """The driver killed outright (SIGKILL, its Ray with it) once a trial has finished: `--resume` continues the
    sweep from Tune's last snapshot; the trials that snapshot records as finished are not run again."""
    from trainables.lora_trial import TrainingSettings, TrialSettings, step_plan

    training = TrainingSettings(num_epochs=3, batch_size=8, accumulation_steps=1)
    # the sweep's training split is the session's: the embedded data, split with seed 0
    final_step = len(step_plan(TrialSettings(model_dir="", training=training), sweep_data.train))
    (tmp_path / "grid.yaml").write_text("sampler: grid\nspace:\n  learning_rate: [1.0e-3, 5.0e-4, 2.0e-4, 1.0e-4]\n"
                                        "  r: [8]\n  alpha: [16]\n")
    argv = [sys.executable, "-m", "orchestrator.run", "--search", str(tmp_path / "grid.yaml"), "--scheduler", "fifo",
            "--num_epochs", "3", "--no-dashboard", "--storage_path", str(tmp_path / "results"),
            "--experiment_name", "driverless"]
    experiment = tmp_path / "results" / "driverless"
    # Tune snapshots the experiment (trial states and results, together) every 10 s or more by default; the trials
    # here finish within seconds of each other, so the kill could only land between two snapshots by luck.
    # A snapshot every second lets the test see a trial finished in a snapshot while others still run.
    env = {**os.environ, "LORA_SWEEP_CACHE": str(model_dir.parent), "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    driver = subprocess.Popen(argv, env=env, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not terminated_in_snapshot(experiment) and time.time() < deadline and driver.poll() is None:
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started
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
