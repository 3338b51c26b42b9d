"""The benchmarks' accounting of training steps against the best eval loss (benchmarks/common.py)."""

import math

from benchmarks.common import best_within, progress, steps_to_reach, total_steps


def trial(*reports):
    return {"reports": [{"step": step, "eval_loss": loss, "reported_at": at} for step, loss, at in reports]}


# Two trials running at once: `a` reports every 10 steps and is stopped after 20; `b` runs to 30.
TRIALS = [trial((10, 5.0, 1.0), (20, 4.0, 3.0)),
          trial((10, 4.5, 2.0), (20, 3.0, 4.0), (30, 2.9, 5.0))]


def test_progress_counts_each_reports_new_steps_in_time_order():
    assert progress(TRIALS) == [(10, 5.0), (20, 4.5), (30, 4.0), (40, 3.0), (50, 2.9)]


def test_best_within_a_budget_of_steps():
    curve = progress(TRIALS)
    assert best_within(curve, 25) == 4.5
    assert best_within(curve, 50) == 2.9
    assert best_within(curve, 5) == math.inf


def test_steps_to_reach_a_target_loss():
    curve = progress(TRIALS)
    assert steps_to_reach(curve, 3.0 * 1.01) == 40
    assert steps_to_reach(curve, 2.0) is None


def test_total_steps_counts_what_stopped_trials_trained():
    assert total_steps(TRIALS) == 50


def test_scaling_is_reported_against_linear_in_workers():
    from benchmarks.scaling import speedups

    one = {"workers": 1, "wall_s": 100.0, "training_span_s": 80.0}
    two = {"workers": 2, "wall_s": 60.0, "training_span_s": 40.0}
    assert speedups(one, two) == {"speedup": 1.667, "efficiency": 0.833, "training_speedup": 2.0,
                                  "training_efficiency": 1.0}


def test_the_driver_benchmark_counts_waits_gaps_and_the_lag_after_the_upload():
    from collections import deque

    from benchmarks.driver_at_scale import lag_after_upload, summarize_waits
    from publishing.coordinator import ResultLag

    # one slot, 10 s between reports: trial a reports twice (its second report never returns: ASHA stopped it),
    # then b starts on the freed slot 1.5 s after a's last report and reports once
    events = [{"trial": "a", "event": "start", "at": 0.0},
              {"trial": "a", "event": "report", "at": 10.0},
              {"trial": "a", "event": "returned", "at": 10.0, "returned_at": 10.7, "upload_s": 0.5, "step": 10,
               "retention_s": 0.0},
              {"trial": "a", "event": "report", "at": 20.7},
              {"trial": "b", "event": "start", "at": 22.2},
              {"trial": "b", "event": "report", "at": 32.2},
              {"trial": "b", "event": "returned", "at": 32.2, "returned_at": 32.5, "upload_s": 0.2, "step": 10,
               "retention_s": 0.0}]
    waits = summarize_waits(events, concurrent=1, interval_s=10.0)
    assert waits["reports"] == 3 and waits["trials"] == 2
    assert waits["wait_per_report_s"]["max"] == 0.2                  # 0.7 - 0.5 of upload; 0.3 - 0.2
    assert waits["gap_between_trials_s"] == {"median": 1.5, "max": 1.5}
    assert math.isclose(waits["driver_share_of_trial_time"], (0.2 + 0.1 + 1.5) / 30, rel_tol=1e-3)

    lag = ResultLag(recent=deque([("a@10", 0.9), ("b@10", 2.4), ("a@20", 5.0)]))  # a@20 never returned: left out
    after = lag_after_upload(lag, events, snapshots=[{"at": 30.0}])
    assert after["results"] == 2 and after["worst"] == 2.2 and after["median"] == 1.3
    assert after["over_1s"] == 1 and after["over_1s_near_a_snapshot"] == 1  # b's checkpoint stored 2.4 s after it
