"""--time_budget: the whole sweep in the time a renter pays for (`90m`, `6h`, `1h30m`, `5400`).

No new trial starts once it would not finish in time, judged from what the sweep has seen: the median wall
time of the trials that ran their full budget, or, while none has, the pace of the trials that have reported
(seconds per report x planned reports); before any evidence a trial may start. Once the budget is spent,
each running trial is stopped at its next report (a trial still setting up: at its first), so the sweep ends
within one report of the limit. Trials that ran keep their checkpoints, so the best is still merged and
published by the rules: a sweep the budget ended is a result, not an interruption.

The decisions are pure functions. Ray Tune's own parts carry them out: `TimeBudgetSearcher` wraps the Optuna
searcher the way Tune's ConcurrencyLimiter does (it declines a trial with `Searcher.FINISHED`), and
`TimeBudgetStopper` is a `tune.Stopper`: a trial stops at its report, and the run ends once the budget is spent
and no trial is left running. (Tune's `stop_all` would end running trials at once, not at a report: the work
since their last report would be lost, and a trial ended before its first report leaves a row without an eval
loss that Tune's sorted progress table cannot order, which fails the sweep at its end.) Both find their sweep's
`BudgetClock` by the sweep's name in the driver, which runs Tune's loop, rather than holding it: Tune saves
them with the experiment, and a resumed sweep must reach the clock of its resume (its own --time_budget,
counted from the resume), not the one that ended with the old driver.
"""

import statistics
import time
from dataclasses import dataclass, field

from ray.tune.search import Searcher
from ray.tune.stopper import Stopper

from orchestrator.durations import format_duration
from trainables.compat import ray_internals
from trainables.trial_contract import TIME_TOTAL_S, TRAINING_ITERATION


def trial_estimate_s(full_trials_s: list[float], paces: list[tuple[float, int]], planned_reports: int) -> float | None:
    """A new trial's expected wall time: the median of the trials that ran their full budget; while none has, the
    median pace of the trials that reported (seconds over reports) times the planned reports; None: no evidence."""
    if full_trials_s:
        return statistics.median(full_trials_s)
    estimates = [seconds / reports * planned_reports for seconds, reports in paces if reports > 0]
    return statistics.median(estimates) if estimates else None


def may_start_trial(elapsed_s: float, limit_s: float, estimate_s: float | None) -> bool:
    """Whether a new trial may start: the budget is not spent, and the trial would finish within it (or nothing
    is known yet about how long a trial takes)."""
    if elapsed_s >= limit_s:
        return False
    return estimate_s is None or elapsed_s + estimate_s <= limit_s


def budget_spent(elapsed_s: float, limit_s: float) -> bool:
    """Running trials stop at their next report from here on."""
    return elapsed_s >= limit_s


def end_run(elapsed_s: float, limit_s: float, running_trials: int) -> bool:
    """End the run once the budget is spent and every trial that started has ended (at a report, or finished)."""
    return budget_spent(elapsed_s, limit_s) and running_trials == 0


@dataclass(frozen=True)
class BudgetEnd:
    """How the budget went, for the summary: whether it ended the sweep, and what it cost the plan."""
    limit_s: float
    elapsed_s: float        # from the sweep's start (or its resume) to the end of its last trial
    ended: bool             # the budget ended the sweep: a trial was declined or stopped because of it
    ran: int                # trials that started
    stopped: int            # of them, stopped by the budget
    never_started: int      # planned trials that never started

    def line(self) -> str:
        limit, elapsed = format_duration(self.limit_s), format_duration(self.elapsed_s)
        if not self.ended:
            return f"every trial ran within the time budget {limit} ({elapsed} used)"
        return (f"time budget {limit} reached after {elapsed}: {self.ran} trial{'s' * (self.ran != 1)} ran, "
                f"{self.stopped} stopped by the budget, {self.never_started} never started")


@dataclass
class BudgetClock:
    """One sweep's budget as the driver keeps it: the limit, the evidence, and what the budget did."""
    limit_s: float | None           # None: no budget; every decision allows
    planned_reports: int
    clock: object = time.monotonic
    started: float = field(default=0.0)
    full_trials_s: list = field(default_factory=list)     # time_total_s of trials that made every planned report
    paces: dict = field(default_factory=dict)             # trial id -> (time_total_s, reports) at its last report
    running: set = field(default_factory=set)             # trials started (suggested) and not yet ended
    declined: bool = False          # the searcher declined a trial because it would not finish in time
    stopped: set = field(default_factory=set)             # trials stopped at a report after the limit

    def __post_init__(self):
        self.started = self.clock()

    @property
    def elapsed_s(self) -> float:
        return self.clock() - self.started

    def observe(self, trial_id: str, result: dict) -> None:
        """A trial's report: its pace."""
        reports = int(result.get(TRAINING_ITERATION, 0) or 0)
        if reports > 0:
            self.paces[trial_id] = (float(result.get(TIME_TOTAL_S, 0.0)), reports)

    def trial_started(self, trial_id: str) -> None:
        self.running.add(trial_id)

    def trial_ended(self, trial_id: str, result: dict | None, error: bool) -> None:
        self.running.discard(trial_id)
        if not error and result and int(result.get(TRAINING_ITERATION, 0)) >= self.planned_reports:
            self.full_trials_s.append(float(result.get(TIME_TOTAL_S, 0.0)))

    def may_start(self) -> bool:
        if self.limit_s is None:
            return True
        estimate = trial_estimate_s(self.full_trials_s, list(self.paces.values()), self.planned_reports)
        allowed = may_start_trial(self.elapsed_s, self.limit_s, estimate)
        self.declined |= not allowed
        return allowed

    def stop_trial(self, trial_id: str, result: dict) -> bool:
        """At a trial's report: stop it when the budget is spent (a trial at its last report just finishes)."""
        if self.limit_s is None or not budget_spent(self.elapsed_s, self.limit_s):
            return False
        if int(result.get(TRAINING_ITERATION, 0) or 0) < self.planned_reports:
            self.stopped.add(trial_id)
        return True

    def stop_run(self) -> bool:
        return self.limit_s is not None and end_run(self.elapsed_s, self.limit_s, len(self.running))

    @property
    def ended(self) -> bool:
        """The budget ended the sweep (declined a trial, or stopped one)."""
        return self.declined or bool(self.stopped)

    def report(self, records: list, planned_trials: int) -> BudgetEnd | None:
        """The summary's account once the trials are over (None without a budget)."""
        from orchestrator.trial_records import TrialStatus, count

        if self.limit_s is None:
            return None
        return BudgetEnd(self.limit_s, self.elapsed_s, self.ended, len(records),
                         count(records, TrialStatus.TIME_BUDGET), max(0, planned_trials - len(records)))


# The clocks of the sweeps this driver runs, by sweep (experiment) name.
_CLOCKS: dict[str, BudgetClock] = {}


def start_clock(sweep_id: str, limit_s: float | None, planned_reports: int, spent_s: float = 0.0) -> BudgetClock:
    """The sweep's budget counts from now, less `spent_s` already spent on the sweep (a resumed sweep: from its
    resume)."""
    _CLOCKS[sweep_id] = clock = BudgetClock(limit_s, planned_reports)
    clock.started -= spent_s
    return clock


def release_clock(sweep_id: str) -> None:
    _CLOCKS.pop(sweep_id, None)


def clock_for(sweep_id: str) -> BudgetClock | None:
    return _CLOCKS.get(sweep_id)


class TimeBudgetSearcher(Searcher):
    """A searcher that declines new trials once one would not finish within the budget; everything else, saving
    and restoring included, is the wrapped searcher's (as in Tune's ConcurrencyLimiter)."""

    def __init__(self, searcher: Searcher, sweep_id: str):
        self.searcher = searcher  # Tune's SearchGenerator saves and restores the wrapped searcher through this
        self.sweep_id = sweep_id
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        # the wrapped searcher is Tune's OptunaSearch (ours): it takes `spec`, as Searcher's signature has it
        accepted = self.searcher.set_search_properties(metric, mode, config, **spec)
        ray_internals.set_searcher_objective(self, self.searcher.metric, self.searcher.mode)
        return accepted

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def suggest(self, trial_id: str):
        clock = clock_for(self.sweep_id)
        if clock is not None and not clock.may_start():
            return Searcher.FINISHED
        suggestion = self.searcher.suggest(trial_id)
        if clock is not None and suggestion not in (None, Searcher.FINISHED):
            clock.trial_started(trial_id)
        return suggestion

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        clock = clock_for(self.sweep_id)
        if clock is not None:
            clock.trial_ended(trial_id, result, error)
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def add_evaluated_point(self, parameters, value, error=False, pruned=False, intermediate_values=None):
        return self.searcher.add_evaluated_point(parameters, value, error, pruned, intermediate_values)

    def get_state(self) -> dict:
        """Saved with the experiment: what the budget already did, so that a resumed sweep (one that the budget had
        stopped starting trials before a Ctrl-C, say) still counts those trials as the budget's, not as missing."""
        clock = clock_for(self.sweep_id)
        return {"sweep_id": self.sweep_id, "declined": bool(clock and clock.declined),
                "stopped": sorted(clock.stopped) if clock else []}

    def set_state(self, state: dict) -> None:
        self.sweep_id = state.get("sweep_id", self.sweep_id)
        clock = clock_for(self.sweep_id)
        if clock is not None:
            clock.declined |= bool(state.get("declined"))
            clock.stopped |= set(state.get("stopped", ()))

    def save(self, checkpoint_path: str):
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str):
        self.searcher.restore(checkpoint_path)

    def on_pause(self, trial_id: str):
        self.searcher.on_pause(trial_id)

    def on_unpause(self, trial_id: str):
        self.searcher.on_unpause(trial_id)


class TimeBudgetStopper(Stopper):
    """Once the budget is spent, each trial stops at its next report, and the run ends when none is left."""

    def __init__(self, sweep_id: str):
        self.sweep_id = sweep_id

    def __call__(self, trial_id: str, result: dict) -> bool:
        clock = clock_for(self.sweep_id)
        if clock is None:
            return False
        clock.observe(trial_id, result)
        return clock.stop_trial(trial_id, result)

    def stop_all(self) -> bool:
        clock = clock_for(self.sweep_id)
        return clock is not None and clock.stop_run()

