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
