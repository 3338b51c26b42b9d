"""The packing benchmark's accounting (benchmarks/packing_throughput.py); never its timings."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.packing_throughput import lognormal_lengths, plan_accounting, summarize
from trainables.packing import StepPlan

REPO = Path(__file__).resolve().parents[1]


def test_lengths_are_the_clipped_log_normals_quantiles():
    lengths = lognormal_lengths(1001, median=256, p95=1500, low=32, high=2048)
    assert lengths.min() == 32 and lengths.max() == 2048
    assert np.median(lengths) == 256
    assert abs(np.quantile(lengths, 0.95) - 1500) < 25
    assert np.all(np.diff(lengths) >= 0)  # quantiles, in order; the trial's seeded order shuffles them


def test_slots_are_rows_times_the_widest_row():
    lengths = np.array([10, 100, 20, 30])
    a = np.array
    padded = plan_accounting(StepPlan([[[a([0]), a([1])], [a([2])]], [[a([3])]]]), lengths)  # one pair a row
    assert padded == {"steps": 2, "micro_batches": 3, "real_tokens": 160, "slots": 2 * 100 + 20 + 30,
                      "padding_share": round(1 - 160 / 250, 4)}
    packed = plan_accounting(StepPlan([[[a([1]), a([0, 2, 3])]]]), lengths)  # two rows of 100 and 60
    assert packed["real_tokens"] == 160 and packed["slots"] == 200


def test_the_ratio_is_the_median_of_each_repeats_packed_over_padded():
    runs = [{"packing": "off", "tokens_per_s": 100.0}, {"packing": "on", "tokens_per_s": 150.0},
            {"packing": "off", "tokens_per_s": 50.0}, {"packing": "on", "tokens_per_s": 100.0},
            {"packing": "off", "tokens_per_s": 100.0}, {"packing": "on", "tokens_per_s": 300.0}]
    summary = summarize(runs)
    assert summary["ratios"] == [1.5, 2.0, 3.0] and summary["median_ratio"] == 2.0
    assert summary["ratio_range"] == [1.5, 3.0]
    assert summary["padded_tokens_per_s"]["median"] == 100.0 and summary["packed_tokens_per_s"]["median"] == 150.0


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("packing") / "quick.json"
    done = subprocess.run([sys.executable, "benchmarks/packing_throughput.py", "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert printed == json.loads(out.read_text())  # the last stdout line is the object --out writes
    return printed


def test_quick_run_accounts_padding_in_the_padded_mode_only(quick):
    padded, packed = quick["padded"], quick["packed"]
    assert padded["slots"] > padded["real_tokens"] and 0 < padded["padding_share"] < 1
    assert padded["padding_share"] == round(1 - padded["real_tokens"] / padded["slots"], 4)
    assert packed["real_tokens"] <= packed["slots"] and packed["padding_share"] < padded["padding_share"]
    # the same pairs in the same steps, either way
    assert padded["real_tokens"] == packed["real_tokens"] == quick["lengths"]["tokens"]
    assert padded["pairs_per_step"] == packed["pairs_per_step"]
    assert sum(packed["pairs_per_step"]) == quick["lengths"]["pairs"]
    assert all(rows >= 1 for rows in packed["rows_per_step"])
    assert padded["micro_batches"] >= packed["steps"] == padded["steps"]


def test_quick_run_alternates_modes_and_counts_only_real_tokens(quick):
    runs = quick["runs"]
    assert [r["packing"] for r in runs] == ["off", "on"] * quick["repeats"]
    for run in runs:
        assert run["tokens_per_s"] > 0 and run["train_s"] > 0
        assert run["step"] == quick["padded"]["steps"]
        # the trial's own tokens/s x seconds is the plan's real tokens: padding is not counted as trained
        assert abs(run["measured_tokens"] - quick["padded"]["real_tokens"]) <= 1
    # same pairs, same steps: both modes train the same loss
    losses = {(r["repeat"], r["packing"]): r["train_loss"] for r in runs}
    assert all(losses[(k, "on")] == pytest.approx(losses[(k, "off")], abs=1e-3) for k in range(quick["repeats"]))


def test_quick_run_ratio_is_computed_from_its_runs(quick):
    runs = quick["runs"]
    padded = [r["tokens_per_s"] for r in runs if r["packing"] == "off"]
    packed = [r["tokens_per_s"] for r in runs if r["packing"] == "on"]
    assert quick["padded_tokens_per_s"] == {"median": statistics.median(padded), "runs": padded}
    assert quick["packed_tokens_per_s"] == {"median": statistics.median(packed), "runs": packed}
    assert quick["ratios"] == [round(b / a, 3) for a, b in zip(padded, packed)]
    assert quick["median_ratio"] == statistics.median(quick["ratios"])
    assert quick["ratio_range"] == [min(quick["ratios"]), max(quick["ratios"])]
