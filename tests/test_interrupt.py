"""Ctrl-C is an interruption, not a success: non-zero exit, nothing merged or published, the exact --resume
command printed; running that command finishes the sweep, and a trial that had ended is not run again. (A killed
worker node, and a driver killed outright: tests/test_s3_storage.py, tests/test_mine.py.)"""

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
def test_ctrl_c_interrupts_publishes_nothing_and_tells_how_to_resume(tmp_path):
    argv = ["--num_samples", "4", "--num_epochs", "3", "--storage_path", str(tmp_path), "--no-dashboard",
            "--experiment_name", "stopped"]
    experiment = tmp_path / "stopped"
    # Tune copies results and trial states to the experiment folder at its snapshots, every 10 s or more by default:
    # a snapshot every second lets the test see a trial ended while the others still run
    snapshot_every_second = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.run", *argv], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True, env=snapshot_every_second)
    try:
        deadline = time.time() + 240
        while not terminated_in_snapshot(experiment) and time.time() < deadline and driver.poll() is None:
            time.sleep(0.2)
        assert terminated_in_snapshot(experiment), "no trial ended in time"
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
    ended = {name: reports(experiment / name / "result.json") for name in terminated_in_snapshot(experiment)}
    assert 0 < len(ended) < 4, "Ctrl-C should land after a trial ended, before the last"

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
    for name, rows in ended.items():
        assert reports(experiment / name / "result.json") == rows, f"{name} had ended, yet it ran again"
    assert (experiment / "best_model").is_dir() and (experiment / "publish.json").is_file()
    check_sealed(str(experiment))  # the resumed sweep sealed its own state and carried the first session's over
