import csv
import math

import pytest

from orchestrator.trial_records import (TrialRecord, TrialStatus, ended_reason, one_line_reason, trial_status,
                                        write_trials_csv)
from trainables.hyperparameters import Hyperparameters

TRACEBACK = """Failure # 1 (occurred at 2026-11-25_10-00-00)
ray.exceptions.RayTaskError(RuntimeError): ray::ImplicitFunc.train() (pid=1, ip=10.0.0.1)
  File "/x/lora_trial.py", line 10, in train_lora
    raise RuntimeError("injected")
RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB
"""


def test_the_reason_is_the_traceback_line_that_says_what_went_wrong():
    assert one_line_reason(TRACEBACK) == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert one_line_reason("") == "unknown error"
    assert one_line_reason("something odd happened") == "something odd happened"
    assert len(one_line_reason("ValueError: " + "x" * 1000)) == 300


def test_how_a_trial_ended():
    assert trial_status(has_error=True, done=False, reports=1, planned_reports=4) is TrialStatus.FAILED
    assert trial_status(has_error=False, done=True, reports=4, planned_reports=4) is TrialStatus.FINISHED
    assert trial_status(has_error=False, done=True, reports=2, planned_reports=4) is TrialStatus.STOPPED
    # neither failed nor done: the sweep was interrupted while it ran (or before it started)
    assert trial_status(has_error=False, done=False, reports=2, planned_reports=4) is TrialStatus.INTERRUPTED
    assert trial_status(has_error=False, done=False, reports=0, planned_reports=4) is TrialStatus.INTERRUPTED
    # every report made, but no result marked done: restored by --resume from its last checkpoint, it ended at once
    assert trial_status(has_error=False, done=False, reports=4, planned_reports=4) is TrialStatus.FINISHED


def test_a_trial_tune_ended_is_not_interrupted_though_its_last_result_lacks_done():
    """Tune's last result for a trial normally carries `done` when Tune ended it; where it does not, the driver's
    record of Tune's on_trial_complete decides (a CI run once read such a trial of a resumed sweep as interrupted)."""
    from types import SimpleNamespace

    from orchestrator.trial_records import records_from_results

    def result(trial_id):
        metrics = {"trial_id": trial_id, "training_iteration": 2, "step": 9, "eval_loss": 6.7, "done": False}
        return SimpleNamespace(metrics=metrics, metrics_dataframe=None, error=None, config={}, path=f"/x/{trial_id}")

    cut_short, ended = records_from_results([result("aaaa0001"), result("aaaa0002")], planned_reports=20,
                                            ended_by_tune={"aaaa0002"})
    assert cut_short.status is TrialStatus.INTERRUPTED and ended.status is TrialStatus.STOPPED
    assert ended.reason.startswith("stopped early by ASHA at step 9, after 2 of 20 evaluations")


def test_trials_csv_has_a_row_per_trial_best_first_with_status_and_reason(tmp_path):
    records = [
        TrialRecord("a1", Hyperparameters(1e-4, 8, 16), TrialStatus.FINISHED, "", 31, 3.5, 3.6, 12.0, "/x/a1"),
        TrialRecord("b2", Hyperparameters(1e-3, 16, 32), TrialStatus.FAILED,
                    "RuntimeError: boom, badly", 10, math.nan, math.nan, 3.0, "/x/b2"),
        TrialRecord("c3", None, TrialStatus.INTERRUPTED, "the sweep was interrupted before it reported", 0, math.nan,
                    math.nan, 0.0, "/x/c3"),
        TrialRecord("d4", Hyperparameters(3e-4, 8, 8), TrialStatus.STOPPED,
                    ended_reason(TrialStatus.STOPPED, 2, 8, 20, 4.25), 20, 4.1, 4.25, 2.0, "/x/d4"),
        # the lowest loss of the sweep, from a trial that failed after reporting it: its checkpoint is still the best
        TrialRecord("e5", Hyperparameters(2e-4, 8, 8), TrialStatus.FAILED, "ValueError: late", 30, 3.2, 3.9, 9.0,
                    "/x/e5"),
    ]
    path = write_trials_csv(records, tmp_path)
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["trial_id", "best", "learning_rate", "r", "alpha", "status", "reason", "steps",
                             "best_eval_loss", "last_eval_loss", "last_rank_loss", "seconds", "train_s", "eval_s",
                             "folder"]
    # by best eval loss; trials without one last, in trial order
    assert [r["trial_id"] for r in rows] == ["e5", "a1", "d4", "b2", "c3"]
    assert [r["best"] for r in rows] == ["yes", "", "", "", ""]
    a1, d4, b2, c3 = rows[1], rows[2], rows[3], rows[4]
    assert (a1["learning_rate"], a1["alpha"]) == ("0.0001", "16")
    assert (c3["learning_rate"], c3["r"], c3["alpha"]) == ("", "", "")
    assert a1["status"] == "finished" and a1["best_eval_loss"] == "3.5" and a1["r"] == "8" and a1["reason"] == ""
    assert b2["status"] == "failed" and b2["reason"] == "RuntimeError: boom, badly"
    assert b2["best_eval_loss"] == ""
    assert d4["status"] == "stopped by the scheduler" and d4["reason"] == (
        "stopped early by ASHA at step 20, after 2 of 8 evaluations (rank_loss 4.2500 above the rung's cutoff)")
    assert c3["reason"] == "the sweep was interrupted before it reported"


def test_no_trial_with_a_loss_flags_no_row_as_best(tmp_path):
    records = [TrialRecord("a1", None, TrialStatus.FAILED, "OSError: x", 0, math.nan, math.nan, 1.0, "/x/a1")]
    rows = list(csv.DictReader(write_trials_csv(records, tmp_path).open()))
    assert [(r["trial_id"], r["best"]) for r in rows] == [("a1", "")]


def test_every_trial_that_did_not_finish_says_why():
    assert ended_reason(TrialStatus.FINISHED, 8, 8, 80, 3.0) == ""
    assert ended_reason(TrialStatus.STOPPED, 2, 8, 20, 4.123456) == (
        "stopped early by ASHA at step 20, after 2 of 8 evaluations (rank_loss 4.1235 above the rung's cutoff)")
    assert ended_reason(TrialStatus.STOPPED, 1, 8, 10, math.nan) == (
        "stopped early by ASHA at step 10, after 1 of 8 evaluations (its rank_loss above the rung's cutoff)")
    assert ended_reason(TrialStatus.TIME_BUDGET, 3, 8, 30, 4.0) == (
        "stopped by --time_budget at step 30, after 3 of 8 evaluations")
    assert ended_reason(TrialStatus.INTERRUPTED, 3, 8, 30, 4.0) == (
        "the sweep was interrupted at step 30, after 3 of 8 evaluations")
    assert ended_reason(TrialStatus.INTERRUPTED, 0, 8, 0, math.nan) == "the sweep was interrupted before it reported"
    assert ended_reason(TrialStatus.FAILED, 1, 8, 10, 4.0, error_text=TRACEBACK) == (
        "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert ended_reason(TrialStatus.OUT_OF_MEMORY, 1, 8, 10, math.nan, out_of_memory="at step 12 (batch of 8)") == (
        "at step 12 (batch of 8)")


def test_trials_csv_and_the_eval_share_count_each_trials_training_and_evaluation_seconds(tmp_path):
    from orchestrator.trial_records import eval_share

    records = [
        TrialRecord("a1", None, TrialStatus.FINISHED, "", 40, 3.5, 3.5, 12.0, "/x/a1", last_rank_loss=3.4,
                    train_s=9.0, eval_s=1.0),
        TrialRecord("b2", None, TrialStatus.STOPPED, "", 10, math.nan, math.nan, 3.0, "/x/b2", last_rank_loss=4.0,
                    train_s=2.5, eval_s=0.5),
        TrialRecord("c3", None, TrialStatus.FAILED, "OSError: x", 0, math.nan, math.nan, 1.0, "/x/c3"),  # no report
    ]
    rows = {r["trial_id"]: r for r in csv.DictReader(write_trials_csv(records, tmp_path).open())}
    assert (rows["b2"]["last_rank_loss"], rows["b2"]["train_s"], rows["b2"]["eval_s"]) == ("4", "2.5", "0.5")
    assert (rows["c3"]["train_s"], rows["c3"]["eval_s"]) == ("", "")
    assert eval_share(records) == (1.5, pytest.approx(1.5 / 13.0))
    assert all(math.isnan(v) for v in eval_share(records[2:]))
