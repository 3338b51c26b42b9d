"""Two sweeps at once on this 2-core machine: four trainers on two cores, each trial an actor of its own, started as
others end or are stopped. No trial may be lost (once to Tune's actor reuse: "Could not re-use actor ...
reset_config()"), and each sweep keeps its own coordinator and results."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_two_sweeps_at_once_lose_no_trial(tmp_path):
    sweeps = [subprocess.Popen([sys.executable, "-m", "orchestrator.run", "--num_samples", "3", "--num_epochs", "1",
                                "--grace_period", "1", "--storage_path", str(tmp_path), "--experiment_name", name,
                                "--no-dashboard"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
              for name in ("first", "second")]
    outputs = [sweep.communicate(timeout=600)[0] for sweep in sweeps]
    for name, sweep, out in zip(("first", "second"), sweeps, outputs):
        assert sweep.returncode == 0, out[-3000:]
        assert "Could not re-use actor" not in out
        rows = list(csv.DictReader((tmp_path / name / "trials.csv").open()))
        assert len(rows) == 3 and all(r["status"] in ("finished", "stopped by the scheduler") for r in rows), rows
