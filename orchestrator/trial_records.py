"""What became of each trial, as the summary and `trials.csv` tell it.

A trial ends one of six ways, and each is told honestly: it ran every planned evaluation
(finished), the scheduler stopped it for lagging (stopped), it ran out of accelerator memory (with
where, in its last report), it raised (failed, with the reason's last line), --time_budget was spent
(stopped by the time budget, at its next report), or the sweep was interrupted while it ran or before
it started (interrupted).
"""

import csv
import enum
import math
from dataclasses import dataclass
from pathlib import Path

from trainables.hyperparameters import NAMES, Hyperparameters
from trainables.trial_contract import (BASE_EVAL_LOSS, DONE, EVAL_LOSS, EVAL_S_TOTAL, OUT_OF_MEMORY, RANK_LOSS, STEP,
                                       TIME_TOTAL_S, TRAIN_S_TOTAL, TRAINING_ITERATION, TRIAL_ID)

TRIALS_CSV = "trials.csv"


class TrialStatus(enum.Enum):
    FINISHED = "finished"
    STOPPED = "stopped by the scheduler"
    OUT_OF_MEMORY = "out of memory"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    TIME_BUDGET = "stopped by the time budget"


@dataclass(frozen=True)
class TrialRecord:
    trial_id: str
    hyperparameters: Hyperparameters | None  # None when Tune's config lacks them
    status: TrialStatus
    reason: str            # why it did not run to the end, in one line (`ended_reason`); empty when it did
    steps: int             # optimizer steps trained (the last report's)
    best_eval_loss: float
    last_eval_loss: float
    seconds: float
    folder: str
    # the untrained model's eval loss, as this trial's worker measured it (the same for every trial of a sweep)
    base_eval_loss: float = math.nan
    last_rank_loss: float = math.nan  # the rank subset's loss at its last report: what ASHA and Optuna compared
    best_rank_loss: float = math.nan  # its lowest rank_loss: what the search saw of it (every trial has one)
    train_s: float = math.nan         # seconds it spent training and evaluating, over all its attempts
    eval_s: float = math.nan


def one_line_reason(error_text: str) -> str:
    """The line of a traceback that says what went wrong (`SomeError: message`), at most 300 characters."""
    lines = [line.strip() for line in error_text.strip().splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    # Ray wraps the trial's exception; the last `Name: message` line is the trial's own
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if ":" in line and head.replace(".", "").replace("_", "").isalnum() and head[:1].isupper():
            return line[:300]
    return lines[-1][:300]


def trial_status(has_error: bool, done: bool, reports: int, planned_reports: int,
                 out_of_memory: bool = False, stopped_by_budget: bool = False) -> TrialStatus:
    """How a trial ended. Tune marks a trial's last result `done` when it finished or the scheduler stopped it;
    a trial that neither failed nor is done was cut short by an interruption of the sweep. `stopped_by_budget`:
    --time_budget's stopper ended it at a report."""
    if has_error:
        return TrialStatus.FAILED
    if out_of_memory:
        return TrialStatus.OUT_OF_MEMORY
    if stopped_by_budget:
        return TrialStatus.FINISHED if reports >= planned_reports else TrialStatus.TIME_BUDGET
    if not done and reports < planned_reports:
        # (a trial that made every report is finished, done or not: one restored by --resume from its last
        # checkpoint, because the driver died before that checkpoint's trial ended, ends without a new report)
        return TrialStatus.INTERRUPTED
    return TrialStatus.FINISHED if reports >= planned_reports else TrialStatus.STOPPED


def ended_reason(status: TrialStatus, reports: int, planned_reports: int, step: int, last_rank_loss: float,
                 error_text: str = "", out_of_memory: str = "") -> str:
    """Why a trial did not run to the end, in one line, as far as its own reports tell (empty for a finished one).

    ASHA stops a trial only at a rung, when the loss it reports there is above the rung's cutoff (the
    1/reduction_factor best losses recorded there so far); the cutoff's value is the scheduler's and is not in the
    trial's results, so the line gives the loss but not the cutoff. The loss is rank_loss, the one ASHA compares
    (the rank subset's; the whole set's where every evaluation is full)."""
    where = f"at step {step}, after {reports} of {planned_reports} evaluations"
    if status is TrialStatus.FAILED:
        return one_line_reason(error_text)
    if status is TrialStatus.OUT_OF_MEMORY:
        return out_of_memory
    if status is TrialStatus.STOPPED:
        loss = f"rank_loss {last_rank_loss:.4f}" if math.isfinite(last_rank_loss) else "its rank_loss"
        return f"stopped early by ASHA {where} ({loss} above the rung's cutoff)"
    if status is TrialStatus.TIME_BUDGET:
        return f"stopped by --time_budget {where}"
    if status is TrialStatus.INTERRUPTED:
        return f"the sweep was interrupted {where}" if reports else "the sweep was interrupted before it reported"
    return ""


def records_from_results(results, planned_reports: int, budget_stopped: frozenset | set = frozenset(),
                         ended_by_tune: frozenset | set = frozenset()) -> list[TrialRecord]:
    """Tune's ResultGrid -> one record per trial, in trial order. `budget_stopped`: the trials --time_budget
    stopped at a report. `ended_by_tune`: the trials the driver saw Tune end (its on_trial_complete): ended, as
    Tune's status says, even where their last result lacks `done` (a resumed sweep's CI run once read such a trial,
    finished in the progress block, as interrupted)."""
    records = []
    for result in results:
        metrics = result.metrics or {}
        history = result.metrics_dataframe
        losses = [] if history is None or EVAL_LOSS not in history else list(history[EVAL_LOSS].dropna())
        losses = [loss for loss in losses if math.isfinite(loss)]  # an out-of-memory trial's last report is inf
        config = result.config or {}
        trial_id = str(metrics.get(TRIAL_ID) or Path(result.path).name)
        reports, step = int(metrics.get(TRAINING_ITERATION, 0)), int(metrics.get(STEP, 0))
        status = trial_status(result.error is not None, bool(metrics.get(DONE)) or trial_id in ended_by_tune,
                              reports, planned_reports,
                              out_of_memory=bool(metrics.get(OUT_OF_MEMORY)),
                              stopped_by_budget=trial_id in budget_stopped)
        last = losses[-1] if losses else math.nan
        rank = _finite_or_nan(metrics.get(RANK_LOSS))
        ranks = [] if history is None or RANK_LOSS not in history else list(history[RANK_LOSS].dropna())
        ranks = [loss for loss in ranks if math.isfinite(loss)]
        base = metrics.get(BASE_EVAL_LOSS)
        records.append(TrialRecord(
            trial_id=trial_id,
            hyperparameters=Hyperparameters.from_mapping(config) if set(NAMES) <= set(config) else None,
            status=status,
            reason=ended_reason(status, reports, planned_reports, step, rank, str(result.error or ""),
                                str(metrics.get(OUT_OF_MEMORY) or "")),
            steps=step,
            best_eval_loss=min(losses) if losses else math.nan,
            last_eval_loss=last,
            seconds=float(metrics.get(TIME_TOTAL_S, 0.0)),
            folder=result_folder(result),
            base_eval_loss=float(base) if isinstance(base, (int, float)) else math.nan,
            last_rank_loss=rank, best_rank_loss=min(ranks) if ranks else math.nan, train_s=_finite_or_nan(metrics.get(TRAIN_S_TOTAL)),
            eval_s=_finite_or_nan(metrics.get(EVAL_S_TOTAL))))
    return records


def _finite_or_nan(value) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def eval_share(records: list[TrialRecord]) -> tuple[float, float]:
    """(evaluation seconds, evaluation's share of the trials' training and evaluation seconds) over the sweep's
    trials that reported them (NaN when none did)."""
    timed = [r for r in records if math.isfinite(r.train_s) and math.isfinite(r.eval_s)]
    evaluating, total = sum(r.eval_s for r in timed), sum(r.train_s + r.eval_s for r in timed)
    return (evaluating, evaluating / total) if total > 0 else (math.nan, math.nan)


def result_folder(result) -> str:
    """The trial's folder as the user would reach it: Tune gives a path on its file system, without the scheme of an
    object-storage URI (s3://), which is put back."""
    scheme = {"s3": "s3", "gcs": "gs"}.get(getattr(getattr(result, "filesystem", None), "type_name", ""), "")
    return f"{scheme}://{result.path}" if scheme else str(result.path)


def count(records: list[TrialRecord], status: TrialStatus) -> int:
    return sum(1 for r in records if r.status is status)


def best_record(records: list[TrialRecord]) -> TrialRecord | None:
    """The trial with the lowest eval loss at any evaluation (the first on a tie), whatever its end: the coordinator
    merges the best checkpoint it was offered, and a trial that failed later still reported that checkpoint."""
    scored = [r for r in records if math.isfinite(r.best_eval_loss)]
    return min(scored, key=lambda r: r.best_eval_loss, default=None)


def ranked(records: list[TrialRecord]) -> list[TrialRecord]:
    """Best eval loss first; trials without a loss last, in trial order (the sort is stable)."""
    return sorted(records, key=lambda r: (not math.isfinite(r.best_eval_loss),
                                          r.best_eval_loss if math.isfinite(r.best_eval_loss) else 0.0))


def write_trials_csv(records: list[TrialRecord], experiment_dir: str | Path) -> Path:
    """trials.csv: one row per trial, the best first, `best` = yes on the best row, `reason` for each unfinished."""
    path = Path(experiment_dir) / TRIALS_CSV
    path.parent.mkdir(parents=True, exist_ok=True)
    best = best_record(records)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial_id", "best", *NAMES, "status", "reason", "steps", "best_eval_loss",
                         "last_eval_loss", "last_rank_loss", "seconds", "train_s", "eval_s", "folder"])
        for r in ranked(records):
            hyperparameters = r.hyperparameters.as_dict().values() if r.hyperparameters else [""] * len(NAMES)
            writer.writerow([r.trial_id, "yes" if r is best else "", *hyperparameters, r.status.value,
                             r.reason, r.steps, _number(r.best_eval_loss), _number(r.last_eval_loss),
                             _number(r.last_rank_loss), f"{r.seconds:.1f}", _seconds(r.train_s), _seconds(r.eval_s),
                             r.folder])
    return path


def _number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6g}"


def _seconds(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.1f}"
