"""benchmarks/startup.py's accounting of the driver's three fixed costs (pure functions: no Ray, no sweep)."""

import pytest

from benchmarks.startup import (first_line_at, launch_cost, medians, per_trial_overhead, probe_medians, probe_phases,
                                table, tail_cost, training_start)

LAUNCHED = 1000.0


def report(started, reported, train_s, eval_s, total_s, load_s=0.4, pid=1):
    return {"trial_started_at": LAUNCHED + started, "reported_at": LAUNCHED + reported, "train_s": train_s,
            "eval_s": eval_s, "time_total_s": total_s, "load_s": load_s, "step": 1, "pid": pid}


# three trials one at a time: each trainable starts, spends 2 s before training, trains, evaluates, reports
TRIALS = [
    [report(10.0, 14.0, 1.5, 0.5, 4.0)],                                   # training from 12.0
    [report(17.0, 20.5, 1.0, 0.5, 3.5), report(17.0, 22.0, 1.0, 0.4, 5.0)],  # from 19.0; 0.1 s in the loop
    [report(25.0, 29.0, 1.5, 0.5, 4.0)],                                   # from 27.0
]
LINES = [(3.0, "model: /models/tiny"), (8.0, "trials: 0/3 done, 0 running"),
         (29.5, "trials: 3/3 done · all trials ended"), (30.0, "checkpoints: kept ..."), (31.0, ""),
         (31.0, "=== Sweep summary ==="), (31.1, "trials:          3 (3 ran to the end)")]


def test_training_starts_at_the_first_report_less_its_training_and_evaluation():
    assert training_start(TRIALS[1]) == pytest.approx(LAUNCHED + 19.0)


def test_launch_cost_is_the_earliest_training_start_with_its_parts():
    cost = launch_cost(list(reversed(TRIALS)), LAUNCHED, LINES)
    assert cost["launch_to_first_training_s"] == pytest.approx(12.0)
    assert cost["to_model_line_s"] == 3.0
    assert cost["to_first_progress_line_s"] == 8.0
    assert cost["to_trainable_start_s"] == pytest.approx(10.0)
    assert cost["trainable_to_training_s"] == pytest.approx(2.0)
    assert cost["first_trial_load_s"] == 0.4


def test_tail_runs_from_the_last_report_to_the_summary_header_and_to_exit():
    tail = tail_cost(TRIALS, LAUNCHED, LINES, exited_s=33.0)
    assert tail["last_report_to_summary_s"] == pytest.approx(2.0)
    assert tail["last_report_to_exit_s"] == pytest.approx(4.0)
    assert tail["summary_to_exit_s"] == pytest.approx(2.0)
    assert tail["marks_after_last_report_s"]["checkpoints_line"] == pytest.approx(1.0)
    assert tail["marks_after_last_report_s"]["all_trials_ended_line"] == pytest.approx(0.5)


def test_a_summary_header_before_the_last_report_is_not_the_summary():
    early = [(5.0, "=== Sweep summary ===")]
    assert tail_cost(TRIALS, LAUNCHED, early, exited_s=33.0)["last_report_to_summary_s"] is None


def test_per_trial_overhead_is_the_gap_plus_the_time_before_training_plus_the_loops_extra():
    cost = per_trial_overhead(list(reversed(TRIALS)))
    assert cost["one_at_a_time"]
    # trial 2: 3.0 s gap + 2.0 s before training + 0.1 s in its loop; trial 3: 3.0 + 2.0 + 0.0
    assert cost["per_trial_overhead_s"] == pytest.approx(5.05)
    assert cost["between_s"] == pytest.approx(3.0)
    assert cost["before_training_s"] == pytest.approx(2.0)
    # span 12.0 -> 29.0 = 17 s, of which 2.0 + 2.9 + 2.0 = 6.9 s trained or evaluated, over 2 later trials
    assert cost["span_overhead_s"] == pytest.approx((17.0 - 6.9) / 2)
    # vs_seed's figure: time_total_s less the training seconds, averaged over all trials
    assert cost["in_trial_s"] == pytest.approx((2.5 + 3.0 + 2.5) / 3)


def test_overlapping_trials_give_no_gap_figures():
    overlapping = [[report(10.0, 14.0, 1.5, 0.5, 4.0)], [report(11.0, 15.0, 1.5, 0.5, 4.0)]]
    cost = per_trial_overhead(overlapping)
    assert not cost["one_at_a_time"]
    assert "per_trial_overhead_s" not in cost
    assert cost["before_training_s"] == pytest.approx(2.0)


def test_output_lines_are_matched_without_terminal_colours():
    lines = [(1.0, "\x1b[36m(trial a pid=1)\x1b[0m kernels: off"), (2.0, "  \x1b[1mmodel: x")]
    assert first_line_at(lines, "model:") == 2.0
    assert first_line_at(lines, "model:", after=2.5) is None


def test_probe_lines_become_phases_in_start_order():
    lines = [(9.0, "[startup-probe] shutdown 8.000 9.500"), (2.0, "[startup-probe] init 1.000 3.000"),
             (9.1, "[startup-probe]-threads -"), (9.2, "unrelated")]
    assert probe_phases(lines) == [{"step": "init", "start_s": 1.0, "end_s": 3.0, "s": 2.0},
                                   {"step": "shutdown", "start_s": 8.0, "end_s": 9.5, "s": 1.5}]


def test_probe_medians_per_step_and_the_workers_boot():
    runs = [{"probe": [{"step": "init", "start_s": 3.0 + i, "end_s": 5.0 + 2 * i, "s": 2.0 + i}],
             "workers": [{"first_seen_s": 7.0, "trainable_start_s": 11.0 + i},
                         {"first_seen_s": 20.0, "trainable_start_s": 22.5}]} for i in (0, 1, 2)]
    steps = probe_medians(runs)
    assert steps["init"] == {"s": 3.0, "start_s": 4.0}
    assert steps["worker boot, first trial"]["s"] == pytest.approx(5.0)
    assert steps["worker boot, later trials"]["s"] == pytest.approx(2.5)


def test_medians_over_runs_and_the_table():
    runs = [{"launch": {"launch_to_first_training_s": s}, "tail": {}, "per_trial": {}, "wall_s": 60.0}
            for s in (9.0, 12.0, 10.0)]
    figures = medians(runs)
    assert figures["launch -> first trial training"] == {"median": 10.0, "min": 9.0, "max": 12.0, "runs": 3}
    assert "last trial -> summary" not in figures
    text = table({"before": figures})
    assert "10.00 s (9.00-12.00)" in text and "<= 5.0 s" in text
