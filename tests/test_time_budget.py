"""--time_budget: parsing, the start and stop decisions at their boundaries, and a real sweep the budget ends."""

import csv
import json
import time
from pathlib import Path

import pytest

from orchestrator.config import ConfigError, load_config
from orchestrator.durations import format_duration, parse_duration
from orchestrator.time_budget import (BudgetClock, BudgetEnd, budget_spent, end_run,
                                      may_start_trial, trial_estimate_s)
from orchestrator.trial_records import TrialStatus, trial_status


@pytest.mark.parametrize("text, seconds", [("45s", 45), ("90m", 5400), ("6h", 21600), ("1h30m", 5400),
                                           ("5400", 5400), ("1h30m15s", 5415), ("2d", 172800), ("1.5h", 5400),
                                           (" 90M ", 5400), ("1h 30m", 5400), ("10s", 10)])
def test_durations_a_renter_writes(text, seconds):
    assert parse_duration(text) == seconds
    assert load_config(["--time_budget", text]).run.time_budget_s == seconds


@pytest.mark.parametrize("text", ["", "abc", "6 hours", "m", "1m1h", "5x", "0", "0m", "1h-30m", "1e3"])
def test_bad_durations_fail_in_one_line_saying_how_to_fix_them(text):
    with pytest.raises(ConfigError) as error:
        load_config(["--time_budget", text])
    message = str(error.value)
    assert "\n" not in message and message.startswith("--time_budget must be")
    assert "90m" in message or "leave it out" in message


@pytest.mark.parametrize("text, fragment", [("0.001", "shorter than 10 s"), ("0.5s", "shorter than 10 s"),
                                            ("9" * 400, "longer than a year"), ("400d", "longer than a year")])
def test_budgets_no_trial_could_use_are_refused(text, fragment):
    """0.001 once ran a sweep whose summary read `eval loss: nan`; a number too large for a float once parsed to
    infinity and failed in the summary."""
    with pytest.raises(ConfigError, match=fragment) as error:
        load_config(["--time_budget", text])
    assert "\n" not in str(error.value)


def test_no_budget_by_default():
    assert load_config([]).run.time_budget is None and load_config([]).run.time_budget_s is None


def test_durations_read_back_as_a_renter_writes_them():
    assert [format_duration(s) for s in (45, 120, 118, 5400, 21600, 0, 3725, 0.5)] == \
        ["45s", "2m", "1m58s", "1h30m", "6h", "0s", "1h2m5s", "0.5s"]


def test_the_estimate_is_the_median_full_trial_else_the_pace_of_reporting_trials():
    assert trial_estimate_s([], [], planned_reports=10) is None  # no evidence yet
    # none finished: seconds per report x planned reports, the median over the trials that reported
    assert trial_estimate_s([], [(10.0, 2), (30.0, 3), (4.0, 1)], planned_reports=10) == 50.0
    # a finished trial's wall time wins over any pace
    assert trial_estimate_s([100.0, 40.0, 70.0], [(1.0, 1)], planned_reports=10) == 70.0
    assert trial_estimate_s([], [(5.0, 0)], planned_reports=10) is None


def test_a_trial_starts_only_when_it_would_finish_in_time():
    assert may_start_trial(0, 60, None)                 # before any evidence, a trial may start
    assert may_start_trial(59.9, 60, None)
    assert not may_start_trial(60, 60, None)            # the budget is spent
    assert may_start_trial(40, 60, 20)                  # finishes exactly at the limit
    assert not may_start_trial(40.1, 60, 20)            # would finish after it
    assert budget_spent(60, 60) and not budget_spent(59.99, 60)
    # the run ends once the budget is spent and no trial is left running (each stops at its next report)
    assert end_run(60, 60, 0) and not end_run(59.9, 60, 0) and not end_run(1e6, 60, 1)


class FakeTime:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_clock_declines_stops_and_ends_at_its_boundaries():
    now = FakeTime()
    clock = BudgetClock(limit_s=100, planned_reports=4, clock=now)
    assert clock.may_start() and clock.may_start()      # nothing known yet
    clock.trial_started("a")
    clock.trial_started("d")
    now.now += 30
    clock.observe("a", {"training_iteration": 1, "time_total_s": 10.0, "time_this_iter_s": 10.0})
    assert clock.may_start()                            # 30 s + 4 x 10 s = 70 s <= 100 s
    now.now += 31
    assert not clock.may_start() and clock.declined     # 61 s + 40 s > 100 s
    clock.trial_ended("a", {"training_iteration": 4, "time_total_s": 39.0}, error=False)
    clock.trial_ended("b", {"training_iteration": 2, "time_total_s": 5.0}, error=False)  # not a full trial
    clock.trial_ended("c", {"training_iteration": 4, "time_total_s": 1.0}, error=True)  # nor a failed one
    assert clock.full_trials_s == [39.0] and clock.may_start()  # 61 s + 39 s = 100 s: just in time
    # running trials: stopped at their first report once the limit is reached, and not before
    now.now += 38.9
    assert not clock.stop_trial("d", {"training_iteration": 2})
    now.now += 0.1
    assert clock.stop_trial("d", {"training_iteration": 2}) and clock.stopped == {"d"}
    assert clock.stop_trial("e", {"training_iteration": 4}) and clock.stopped == {"d"}  # e made its last report
    # the run ends once no trial is left running (Tune tells the searcher of each ended trial)
    assert not clock.stop_run()
    clock.trial_ended("d", {"training_iteration": 2, "time_total_s": 50.0}, error=False)
    assert clock.stop_run() and clock.ended


def test_without_a_budget_the_clock_allows_everything():
    now = FakeTime()
    clock = BudgetClock(limit_s=None, planned_reports=4, clock=now)
    now.now += 1e9
    assert clock.may_start() and not clock.stop_trial("a", {"training_iteration": 1}) and not clock.stop_run()
    assert not clock.ended and clock.report([], 8) is None


def test_trials_the_budget_stopped_are_told_apart():
    assert trial_status(False, True, 2, 4, stopped_by_budget=True) is TrialStatus.TIME_BUDGET
    assert trial_status(False, False, 0, 4, stopped_by_budget=True) is TrialStatus.TIME_BUDGET  # ended with the run
    assert trial_status(False, True, 4, 4, stopped_by_budget=True) is TrialStatus.FINISHED
    assert trial_status(True, False, 2, 4, stopped_by_budget=True) is TrialStatus.FAILED
    assert trial_status(False, True, 2, 4) is TrialStatus.STOPPED and trial_status(False, False, 2, 4) is \
        TrialStatus.INTERRUPTED


def test_the_ended_line():
    assert BudgetEnd(120, 118, True, 3, 2, 5).line() == \
        "time budget 2m reached after 1m58s: 3 trials ran, 2 stopped by the budget, 5 never started"
    assert BudgetEnd(21600, 4200, False, 8, 0, 0).line() == "every trial ran within the time budget 6h (1h10m used)"


def test_the_searcher_wrapper_declines_and_delegates_the_rest():
    from ray.tune.search import Searcher

    from orchestrator.search_space import load_search_space, optuna_search
    from orchestrator.time_budget import TimeBudgetSearcher, release_clock, start_clock

    inner = optuna_search(load_search_space("default"), 0, "eval_loss", "min")
    searcher = TimeBudgetSearcher(inner, "wrapper-test")
    assert (searcher.metric, searcher.mode) == ("eval_loss", "min") and searcher.searcher is inner
    assert searcher.suggest("t1")  # no clock of this name: a pass-through
    clock = start_clock("wrapper-test", 10, 4)
    try:
        assert searcher.suggest("t2")  # no evidence yet
        clock.started -= 11
        assert searcher.suggest("t3") is Searcher.FINISHED
        searcher.on_trial_complete("t1", {"training_iteration": 4, "time_total_s": 3.0, "eval_loss": 1.0})
        assert clock.full_trials_s == [3.0]
        clock.stopped.add("t2")
        state = searcher.get_state()
    finally:
        release_clock("wrapper-test")
    # saved with the experiment: a resumed sweep's new clock (its own budget, or none) still knows what the budget did
    resumed = start_clock("wrapper-test", None, 4)
    try:
        TimeBudgetSearcher(inner, "wrapper-test").set_state(state)
        assert resumed.declined and resumed.stopped == {"t2"} and resumed.ended and resumed.may_start()
    finally:
        release_clock("wrapper-test")


def report_times(experiment: Path) -> list[tuple[float, list[float]]]:
    """Each trial's start and its reports' wall-clock times, as its result.json recorded them."""
    trials = []
    for folder in sorted(experiment.iterdir()):
        if (folder / "result.json").is_file():
            lines = [json.loads(line) for line in (folder / "result.json").read_text().splitlines() if line.strip()]
            trials.append((lines[0]["trial_started_at"], [line["reported_at"] for line in lines]))
    return trials


@pytest.mark.slow
def test_the_time_budget_ends_a_sweep_within_one_report_and_still_merges_the_best(local_ray, model_dir,
                                                                                    sweep_data, tmp_path):
    from orchestrator.inputs import trial_settings
    from orchestrator.search_space import parse_search_space
    from orchestrator.summary import render_summary
    from orchestrator.outcome import summary_record
    from orchestrator.sweep import run_sweep
    from publishing.publisher import PublishTarget
    from publishing.setup import PublishSetup

    budget_s = 20
    config = load_config(["--time_budget", f"{budget_s}s", "--num_samples", "12", "--num_epochs", "30",
                          "--eval_steps", "1", "--scheduler", "fifo", "--storage_path", str(tmp_path),
                          "--experiment_name", "budget", "--no-dashboard"])
    space = parse_search_space({"sampler": "tpe", "num_samples": 12, "space": {
        "learning_rate": {"loguniform": [1e-4, 1e-3]}, "r": [4, 8], "alpha": [8, 16]}}, "test")
    started = time.time()
    outcome = run_sweep(config, space, trial_settings(config, model_dir), sweep_data, PublishSetup(PublishTarget()))

    reports = report_times(tmp_path / "budget")
    assert reports and all(times for _, times in reports), reports
    limit = started + budget_s
    for start, times in reports:
        assert start < limit, reports                           # no trial started once the budget was spent
        assert len([t for t in times if t > limit]) <= 1, reports  # each stopped at its next report after it
    # one report interval: the longest a trial took for one report (from its start to its first, or between two)
    interval = max(b - a for start, times in reports for a, b in zip([start, *times], times))
    last_report = max(t for _, times in reports for t in times)
    assert last_report <= limit + interval, (last_report - started, interval, reports)

    assert not outcome.interrupted
    assert outcome.num_trials < 12 and outcome.stopped_by_budget >= 1
    assert outcome.time_budget.ended and outcome.time_budget.never_started == 12 - outcome.num_trials
    assert outcome.best_model_dir and Path(outcome.best_model_dir).is_dir()  # the best was still merged
    assert json.loads((tmp_path / "budget" / "lora_sweep.json").read_text())["status"] == "finished"
    statuses = [row["status"] for row in csv.DictReader((tmp_path / "budget" / "trials.csv").open())]
    assert "stopped by the time budget" in statuses and "interrupted" not in statuses

    summary = render_summary(outcome, config)
    ended = next(line for line in summary.splitlines() if line.startswith("ended:"))
    assert ended.startswith(f"ended:           time budget {budget_s}s reached after "), ended
    assert (f"{outcome.num_trials} trial{'s' * (outcome.num_trials != 1)} ran, {outcome.stopped_by_budget} "
            f"stopped by the budget, {12 - outcome.num_trials} never started") in ended
    assert f"{outcome.stopped_by_budget} stopped by the time budget" in summary
    assert summary_record(outcome)["ended"] == outcome.time_budget.line()
