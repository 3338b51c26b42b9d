"""The driver's progress block and its time-left estimate: pure functions, no Ray started.
(A real sweep's printed block is checked in tests/test_sweep.py::test_sweep_end_to_end.)"""

import math

import pytest

from orchestrator.progress import (TrialView, duration_text, eta_text, header, progress_block, time_left_s,
                                   trial_line)
from orchestrator.trial_records import TrialStatus
from trainables.hyperparameters import Hyperparameters

HP = Hyperparameters(learning_rate=6.9e-4, r=64, alpha=64)
REPORT = {"step": 30, "eval_loss": 3.123456789, "train_loss": 3.2, "tokens_per_s": 1234.4}


def running(trial_id="254c6de9", reports=3, seconds=30.0, latest=REPORT, best=math.nan):
    return TrialView(trial_id, "RUNNING", HP, reports=reports, seconds=seconds, latest=latest, best_eval_loss=best)


def ended(trial_id, status=TrialStatus.FINISHED, seconds=100.0, best=4.0, reported_at=0.0):
    return TrialView(trial_id, "ENDED", HP, reports=10, seconds=seconds, latest={"step": 100, "eval_loss": best},
                     best_eval_loss=best, ended=status, reported_at=reported_at)


def test_a_trials_line_names_it_and_shows_its_latest_report_to_four_decimals():
    assert trial_line(running()) == ("254c6de9 RUNNING lr=6.90e-04 r=64 alpha=64 step 30 eval_loss 3.1235 "
                                     "train_loss 3.2000 tokens/s 1234")


def test_a_trial_that_has_not_reported_shows_its_name_only_and_an_ended_one_how_it_ended():
    assert trial_line(running(latest={})) == "254c6de9 RUNNING lr=6.90e-04 r=64 alpha=64"
    assert trial_line(ended("aa", TrialStatus.STOPPED)).startswith("aa STOPPED lr=6.90e-04 r=64 alpha=64 step 100")
    assert trial_line(ended("bb", TrialStatus.FAILED)).startswith("bb ERROR ")
    # an out-of-memory trial's last report is inf: left out rather than printed as a loss
    oom = TrialView("cc", "ENDED", HP, latest={"step": 5, "eval_loss": math.inf}, ended=TrialStatus.OUT_OF_MEMORY)
    assert trial_line(oom) == "cc OUT_OF_MEMORY lr=6.90e-04 r=64 alpha=64 step 5"


def test_the_header_counts_trials_names_the_best_and_says_how_long():
    views = [ended("a1", TrialStatus.FINISHED, best=3.5), ended("a2", TrialStatus.STOPPED, best=3.9),
             ended("a3", TrialStatus.FINISHED, best=3.7), running("254c6de9", best=3.123456789),
             running("b2", best=3.3)]
    assert header(views, 8, "about 4m left") == (
        "trials: 3/8 done (1 stopped early), 2 running, 3 pending · best eval_loss 3.1235 "
        "(trial 254c6de9 lr=6.90e-04 r=64 alpha=64) · about 4m left")


def test_the_header_before_any_evaluation():
    expected = "trials: 0/4 done, 0 running, 4 pending · no eval_loss yet · estimating…"
    assert header([], 4, "estimating…") == expected


def test_the_block_lists_running_trials_then_the_most_recently_ended_and_no_table_borders():
    views = [running("r1"), ended("old", reported_at=1), ended("e2", reported_at=2), ended("e3", reported_at=3),
             ended("new", reported_at=4), TrialView("p1", "PENDING", HP)]
    lines = progress_block(views, total=8, planned_reports=10, slots=2).splitlines()
    assert lines[0].startswith("trials: 4/8 done, 1 running, 3 pending · best eval_loss 4.0000")
    assert [line.split()[0] for line in lines[1:]] == ["r1", "new", "e3", "e2"]
    assert not any(c in "".join(lines) for c in "|+")


def test_time_left_is_unknown_until_a_trial_has_reported_or_ended():
    assert time_left_s([], [], pending=8, slots=2) is None
    assert time_left_s([], [(0.0, 0.0), (0.0, 0.0)], pending=6, slots=2) is None
    assert eta_text(None, 8) == "estimating…"


def test_time_left_from_running_trials_pace_alone():
    # one trial 1/4 done after 60 s: 180 s more for it, and each of the 2 pending takes 240 s, on 2 slots
    assert time_left_s([], [(60.0, 0.25)], pending=2, slots=2) == pytest.approx((180 + 2 * 240) / 2)


def test_time_left_uses_the_median_ended_trial_for_those_not_started_and_never_less_than_the_slowest_running():
    # ended trials took 100, 40 (stopped early) and 120 s: median 100
    assert time_left_s([100.0, 40.0, 120.0], [(10.0, 0.0)], pending=3, slots=2) == pytest.approx((100 + 300) / 2)
    # many slots: the longest running trial bounds it
    assert time_left_s([100.0], [(50.0, 0.1)], pending=0, slots=8) == pytest.approx(450.0)
    assert time_left_s([100.0], [], pending=0, slots=2) == 0.0


def test_durations_read_at_the_size_that_matters():
    assert [duration_text(s) for s in (40, 59.6, 240, 3590, 4800, 7200)] == ["40s", "1m", "4m", "1h", "1h 20m", "2h"]
    assert eta_text(240.0, 3) == "about 4m left"
    assert eta_text(None, 0) == "all trials ended"
    assert eta_text(240.0, 3, done=True) == "sweep ended"  # a --time_budget left 3 trials unstarted
