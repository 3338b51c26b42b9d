import csv
import math

from orchestrator.trial_records import TrialRecord, TrialStatus, one_line_reason, trial_status, write_trials_csv
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


def test_trials_csv_has_a_row_per_trial_with_status_and_reason(tmp_path):
    records = [
        TrialRecord("a1", Hyperparameters(1e-4, 8, 16), TrialStatus.FINISHED, "", 31, 3.5, 3.6, 12.0, "/x/a1"),
        TrialRecord("b2", Hyperparameters(1e-3, 16, 32), TrialStatus.FAILED,
                    "RuntimeError: boom, badly", 10, math.nan, math.nan, 3.0, "/x/b2"),
        TrialRecord("c3", None, TrialStatus.INTERRUPTED, "", 0, math.nan, math.nan, 0.0, "/x/c3"),
    ]
    path = write_trials_csv(records, tmp_path)
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["trial_id", "learning_rate", "r", "alpha", "status", "reason", "steps",
                             "best_eval_loss", "last_eval_loss", "seconds", "folder"]
    assert [r["trial_id"] for r in rows] == ["a1", "b2", "c3"]
    assert (rows[0]["learning_rate"], rows[0]["alpha"]) == ("0.0001", "16")
    assert (rows[2]["learning_rate"], rows[2]["r"], rows[2]["alpha"]) == ("", "", "")
    assert rows[0]["status"] == "finished" and rows[0]["best_eval_loss"] == "3.5" and rows[0]["r"] == "8"
    assert rows[1]["status"] == "failed" and rows[1]["reason"] == "RuntimeError: boom, badly"
    assert rows[1]["best_eval_loss"] == ""
