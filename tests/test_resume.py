"""The driver killed mid-sweep: `--resume` continues the experiment; finished trials are not rerun."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from trainables.lora_trial import TrialSettings, optimizer_steps

GRID = "sampler: grid\nspace:\n  learning_rate: [1.0e-3, 5.0e-4, 2.0e-4, 1.0e-4]\n  r: [8]\n  alpha: [16]\n"


# 241 training pairs in batches of 8, three epochs: every trial's last step
FINAL_STEP = optimizer_steps(TrialSettings(model_dir="", num_epochs=3, batch_size=8, accumulation_steps=1), 241)


def finished_trials(experiment: Path) -> dict[str, list[dict]]:
    done = {}
    for result in experiment.glob("*/result.json"):
        reports = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if reports and reports[-1]["step"] == FINAL_STEP:
            done[result.parent.name] = reports
    return done


def test_a_killed_driver_resumes_without_rerunning_finished_trials(tmp_path):
    (tmp_path / "grid.yaml").write_text(GRID)
    argv = [sys.executable, "-m", "orchestrator.run", "--search", str(tmp_path / "grid.yaml"), "--scheduler", "fifo",
            "--num_epochs", "3", "--batch_size", "8", "--accumulation_steps", "1", "--storage_path", str(tmp_path / "r"), "--experiment_name", "killed",
            "--no-dashboard"]
    env = {**os.environ, "LORA_SWEEP_CACHE": str(tmp_path / "cache")}
    experiment = tmp_path / "r" / "killed"

    driver = subprocess.Popen(argv, env=env, cwd=Path(__file__).parents[1], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not finished_trials(experiment) and time.time() < deadline and driver.poll() is None:
        time.sleep(1)
    before = finished_trials(experiment)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started, as when its machine dies
    driver.wait()
    assert before and len(before) < 4, "the kill should land after the first trial finished and before the last"
    time.sleep(2)

    resumed = subprocess.run([*argv, "--resume"], env=env, cwd=Path(__file__).parents[1], capture_output=True,
                             text=True, timeout=480)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {experiment}" in resumed.stdout and "=== Sweep summary ===" in resumed.stdout
    after = finished_trials(experiment)
    assert len(after) == 4  # every grid point, each once
    for name, reports in before.items():
        assert after[name] == reports  # a trial finished before the kill was not run again
    assert (experiment / "publish.json").is_file()
