"""The driver's progress block: what the terminal and a Ray job's driver log show every ~10 s while trials run.

A log viewer (the dashboard's, a CI log) shows proportional or wrapped text, so the block is plain lines that
read the same whatever the font: no table borders and nothing that depends on alignment. One header line, then
one line per running or recently ended trial:

    trials: 3/8 done (1 stopped early), 2 running, 3 pending · best eval_loss 3.1234 (trial 254c6de9 lr=6.90e-04
    r=64 alpha=64) · about 4m left                                            (one line, wrapped here)
    254c6de9 RUNNING lr=6.90e-04 r=64 alpha=64 step 30 eval_loss 3.1234 train_loss 3.2000 tokens/s 1234

Only true losses appear: Tune's own table also printed the scheduler's rung cut-offs, which ASHA keeps negated
for a `min` metric, and a `Result logdir` in Ray's temporary folder rather than the experiment's.

Everything here but `view_of` and `ProgressBlock` (Tune's side) is a pure function of plain values,
tested without Ray.
"""

import math
import statistics
import time
from dataclasses import dataclass, field

from ray.tune import ProgressReporter

from orchestrator.trial_records import TrialStatus, trial_status
from trainables.hyperparameters import NAMES, Hyperparameters
from trainables.trial_contract import (EVAL_LOSS, OUT_OF_MEMORY, RANK_LOSS, STEP, TIME_TOTAL_S, TIMESTAMP,
                                       TOKENS_PER_S, TRAIN_LOSS, TRAINING_ITERATION)
from trainables.trial_telemetry import LINE_FIELDS as WORKER_LINE_FIELDS, trial_label

REPORT_EVERY_S = 10
RECENT_ENDED = 3  # ended trials listed under the running ones, newest first
RUNNING = "RUNNING"  # Tune's state of a trial that trains now
# how an ended trial's status reads in its line
ENDED_WORDS = {TrialStatus.FINISHED: "FINISHED", TrialStatus.STOPPED: "STOPPED", TrialStatus.FAILED: "ERROR",
               TrialStatus.OUT_OF_MEMORY: "OUT_OF_MEMORY", TrialStatus.TIME_BUDGET: "STOPPED",
               TrialStatus.INTERRUPTED: "INTERRUPTED"}
# header wording for ended trials that did not finish, in this order
HEADER_WORDS = [(TrialStatus.STOPPED, "stopped early"), (TrialStatus.TIME_BUDGET, "stopped by the time budget"),
                (TrialStatus.OUT_OF_MEMORY, "out of memory"), (TrialStatus.FAILED, "failed"),
                (TrialStatus.INTERRUPTED, "interrupted")]
# (report metric, label, format) of a trial's line: these metrics, labelled as in the worker's own line
LINE_METRICS = (STEP, EVAL_LOSS, RANK_LOSS, TRAIN_LOSS, TOKENS_PER_S)
LINE_FIELDS = [entry for entry in WORKER_LINE_FIELDS if entry[0] in LINE_METRICS]


@dataclass(frozen=True)
class TrialView:
    """One trial as the block shows it, taken from Tune's Trial at a report."""
    trial_id: str
    state: str                          # RUNNING, PENDING, PAUSED, or, once ended, "ENDED"
    hyperparameters: Hyperparameters | None
    reports: int = 0                    # evaluations reported so far
    seconds: float = 0.0                # its trainable's time at its latest report
    latest: dict = field(default_factory=dict)  # its latest report
    best_eval_loss: float = math.nan    # its lowest eval loss so far
    ended: TrialStatus | None = None    # how it ended, once it has
    reported_at: float = 0.0            # when it last reported (orders the recently ended)

    @property
    def label(self) -> str:
        """`254c6de9 lr=6.90e-04 r=64 alpha=64`: what names a trial in every line."""
        return trial_label(self.trial_id, self.hyperparameters.as_dict() if self.hyperparameters else {})


def finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def trial_line(view: TrialView) -> str:
    """`254c6de9 RUNNING lr=6.90e-04 r=64 alpha=64 step 30 eval_loss 3.1234 train_loss 3.2000 tokens/s 1234`."""
    state = ENDED_WORDS.get(view.ended, view.ended.name) if view.ended else view.state
    parts = [view.trial_id, state] + ([view.hyperparameters.compact()] if view.hyperparameters else [])
    for key, label, spec in LINE_FIELDS:
        if key == RANK_LOSS and EVAL_LOSS in view.latest:
            continue  # a full evaluation shows the whole set's loss; a subset one (no eval_loss) its rank_loss
        value = finite(view.latest.get(key))
        if value is not None:
            parts.append(f"{label} {int(value) if spec == 'd' else value:{spec}}")
    return " ".join(parts)


def time_left_s(finished_s: list[float], running: list[tuple[float, float]], pending: int, slots: int) -> float | None:
    """Seconds until the sweep ends, or None while nothing tells yet.

    finished_s: how long each ended trial ran (stopped-early ones too: a pending trial may be stopped as well);
    running: (seconds so far, share of its planned evaluations done) of each running trial; pending: trials not
    started; slots: how many run at once. A running trial that has reported extrapolates its own pace; the rest
    (and every pending trial) take the median ended trial, else the median projected running trial."""
    projected = [elapsed / share for elapsed, share in running if share > 0]
    typical = statistics.median(finished_s) if finished_s else (statistics.median(projected) if projected else None)
    left = []
    for elapsed, share in running:
        if share > 0:
            left.append(max(elapsed / share - elapsed, 0.0))
        elif typical is not None:
            left.append(typical)
        else:
            return None
    if pending and typical is None:
        return None
    work = sum(left) + pending * (typical or 0.0)
    return max(max(left, default=0.0), work / max(slots, 1))


def duration_text(seconds: float) -> str:
    """4m, 1h 20m, 40s: rounded to what matters at that size."""
    if round(seconds) < 60:
        return f"{round(seconds)}s"
    hours, minutes = divmod(round(seconds / 60), 60)
    if not hours:
        return f"{minutes}m"
    return f"{hours}h {minutes}m" if minutes else f"{hours}h"


def eta_text(seconds: float | None, trials_left: int, done: bool = False) -> str:
    if done or trials_left == 0:  # done: Tune's last report (a --time_budget may leave trials never started)
        return "all trials ended" if trials_left == 0 else "sweep ended"
    return "estimating…" if seconds is None else f"about {duration_text(seconds)} left"


def header(views: list[TrialView], total: int, eta: str) -> str:
    """`trials: 3/8 done (1 stopped early), 2 running, 3 pending · best eval_loss 3.1234 (trial ...) · about 4m left`
    (a trial not started yet counts as pending, whether or not Tune has created it)"""
    ended = [v for v in views if v.ended]
    running = sum(v.state == RUNNING for v in views)
    total = max(total, len(views))
    details = ", ".join(f"{n} {words}" for status, words in HEADER_WORDS
                        if (n := sum(v.ended is status for v in ended)))
    counts = (f"trials: {len(ended)}/{total} done{f' ({details})' if details else ''}, {running} running, "
              f"{total - len(ended) - running} pending")
    scored = [v for v in views if finite(v.best_eval_loss) is not None]
    best = min(scored, key=lambda v: v.best_eval_loss, default=None)
    best_text = (f"best eval_loss {best.best_eval_loss:.4f} (trial {best.label})" if best
                 else "no eval_loss yet")
    return f"{counts} · {best_text} · {eta}"


def progress_block(views: list[TrialView], total: int, planned_reports: int, slots: int, done: bool = False) -> str:
    """The header and one line per running trial, then the most recently ended ones."""
    ended = [v for v in views if v.ended]
    running = [v for v in views if v.state == RUNNING]
    trials_left = max(total, len(views)) - len(ended)
    seconds = time_left_s([v.seconds for v in ended],
                          [(v.seconds, min(v.reports / planned_reports, 1.0) if planned_reports else 0.0)
                           for v in running],
                          trials_left - len(running), slots)
    recent = sorted(ended, key=lambda v: v.reported_at, reverse=True)[:RECENT_ENDED]
    return "\n".join([header(views, total, eta_text(seconds, trials_left, done)), *map(trial_line, running + recent)])


def view_of(trial, planned_reports: int) -> TrialView:
    """Tune's Trial (ray.tune.experiment.Trial) -> TrialView."""
    latest = dict(trial.last_result or {})
    reports = int(latest.get(TRAINING_ITERATION) or 0)
    ended = None
    if trial.status in ("TERMINATED", "ERROR"):
        # an ended trial is done (Tune keeps a trial that an interruption cut short PENDING or RUNNING)
        ended = trial_status(trial.status == "ERROR", True, reports, planned_reports,
                             out_of_memory=bool(latest.get(OUT_OF_MEMORY)))
    config = trial.config or {}
    return TrialView(
        trial_id=trial.trial_id, state="ENDED" if ended else trial.status,
        hyperparameters=Hyperparameters.from_mapping(config) if set(NAMES) <= set(config) else None,
        reports=reports, seconds=float(latest.get(TIME_TOTAL_S) or 0.0), latest=latest,
        best_eval_loss=float((trial.metric_analysis.get(EVAL_LOSS) or {}).get("min", math.nan)),
        ended=ended, reported_at=float(latest.get(TIMESTAMP) or 0.0))


class ProgressBlock(ProgressReporter):
    """Tune's progress reporter for this sweep: prints `progress_block` every REPORT_EVERY_S seconds and at the end.
    The scheduler's and resources' status strings Tune passes along (`*sys_info`) are left out (see the module)."""

    def __init__(self, total_trials: int, planned_reports: int, slots: int, every_s: float = REPORT_EVERY_S,
                 title: str = ""):
        self.total_trials, self.planned_reports, self.slots = total_trials, planned_reports, slots
        self.every_s = every_s
        self.title = title  # opens each header: `round 2 · trials: ...` (orchestrator.mine)
        self._last_printed = 0.0

    def setup(self, start_time=None, total_samples=None, metric=None, mode=None, **kwargs):
        pass  # the total comes from the sweep (a resumed sweep's searcher may count only what is left)

    def should_report(self, trials, done: bool = False) -> bool:
        return done or time.monotonic() - self._last_printed >= self.every_s

    def report(self, trials, done: bool, *sys_info: str) -> None:
        self._last_printed = time.monotonic()
        views = [view_of(t, self.planned_reports) for t in trials]
        block = progress_block(views, self.total_trials, self.planned_reports, self.slots, done)
        title = getattr(self, "title", "")  # (a sweep saved before titles were: its pickled reporter has none)
        print("\n" + (f"{title} · " if title else "") + block, flush=True)
