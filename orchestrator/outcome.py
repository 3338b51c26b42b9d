"""What a sweep ends with: the typed outcome the summary, the W&B summary run and the tests read, and how it is
collected from Tune's results once the coordinator has merged the best model."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from orchestrator.trial_records import TrialRecord, TrialStatus, count
from publishing.coordinator import CoordinatorReport
from trainables.trial_contract import BASE_EVAL_LOSS, STEP, TASK_LOSSES, TRIAL_ID

if TYPE_CHECKING:  # typing only: these import Ray, Optuna or the publishing stack
    from orchestrator.cluster_plan import ClusterPlan
    from orchestrator.config import SweepConfig
    from orchestrator.experiment import Experiment
    from orchestrator.search_space import SearchSpace
    from orchestrator.study import StudyChoice
    from orchestrator.study_report import StudyReport
    from orchestrator.time_budget import BudgetEnd
    from publishing.head_to_head import Comparison, Opponent
    from trainables.data import SweepData
    from trainables.settings import TrialSettings


@dataclass(frozen=True)
class HeadToHead:
    """--comparison_uid: the opponent and its per-pair losses, measured once before the sweep."""
    opponent: Opponent
    their_losses: list[float]


@dataclass(frozen=True)
class SweepOutcome:
    experiment_path: str
    experiment_name: str
    trials: list[TrialRecord]   # every trial, in trial order
    interrupted: bool           # Ctrl-C (or a stop signal) ended the sweep before every trial ended
    best_trial: TrialRecord | None  # the trial whose checkpoint was merged (None when interrupted)
    base_eval_loss: float
    wall_s: float
    plots: list[str]            # PNG files in the experiment folder
    comparison: Comparison | None   # the head-to-head against --comparison_uid
    publish: CoordinatorReport  # the coordinator's report: what it published and merged, one line per outcome
    trials_csv: str = ""
    best_task_losses: dict[str, float] = field(default_factory=dict)  # a competition of weighted tasks: each one's
    study: StudyChoice | None = None  # --study: the durable study this sweep continued
    time_budget: BudgetEnd | None = None  # --time_budget: how the budget ended the sweep (None without a budget)
    what_mattered: StudyReport | None = None  # importances, compute, early stopping

    @property
    def best_model_dir(self) -> str | None:
        return self.publish.best.model_dir if self.publish.best else None

    @property
    def best_eval_loss(self) -> float:
        return self.publish.best.eval_loss if self.publish.best else math.nan

    @property
    def best_step(self) -> int:
        return self.publish.best.step if self.publish.best else 0

    @property
    def best_hyperparameters(self) -> dict:
        return self.publish.best.hyperparameters if self.publish.best else {}

    @property
    def num_trials(self) -> int:
        return len(self.trials)

    @property
    def finished(self) -> int:
        return count(self.trials, TrialStatus.FINISHED)

    @property
    def stopped_early(self) -> int:
        return count(self.trials, TrialStatus.STOPPED)

    @property
    def out_of_memory(self) -> int:
        return count(self.trials, TrialStatus.OUT_OF_MEMORY)

    @property
    def errored(self) -> int:
        return count(self.trials, TrialStatus.FAILED)

    @property
    def interrupted_trials(self) -> int:
        return count(self.trials, TrialStatus.INTERRUPTED)

    @property
    def stopped_by_budget(self) -> int:
        return count(self.trials, TrialStatus.TIME_BUDGET)


def interrupted_outcome(experiment: Experiment, records: list[TrialRecord], results, wall_s: float,
                        offline: bool, trials_csv: str) -> SweepOutcome:
    """A sweep Ctrl-C (or a stop signal) ended: nothing merged, plotted or published."""
    return SweepOutcome(experiment.path, experiment.name, records, interrupted=True, best_trial=None,
                        base_eval_loss=base_eval_loss(results), wall_s=wall_s, plots=[], comparison=None,
                        publish=CoordinatorReport(lines=[], offline=offline), trials_csv=trials_csv)


def collect_outcome(config: SweepConfig, experiment: Experiment, records: list[TrialRecord], results,
                    report: CoordinatorReport, comparison: HeadToHead | None, settings: TrialSettings,
                    data: SweepData, plan: ClusterPlan, trials_csv: str, wall_s: float,
                    space: SearchSpace | None = None, study: StudyChoice | None = None,
                    time_budget: BudgetEnd | None = None,
                    meanwhile: Callable[[SweepOutcome], None] = lambda outcome: None) -> SweepOutcome:
    """The finished sweep's outcome: the merged best, the plots, the head-to-head against --comparison_uid, and
    what mattered (importances over the space's distributions, compute spent, what early stopping saved).
    `meanwhile` gets the outcome without its plots and what-mattered while those are drawn: the driver shuts its Ray
    down then (a second or two of waiting for Ray's processes) and prints the summary's first lines. The
    head-to-head, which needs Ray, comes before it."""
    from concurrent.futures import ThreadPoolExecutor

    from publishing.head_to_head import head_to_head

    best = report.best
    versus = None
    if comparison is not None and best is not None:
        versus = head_to_head(comparison.opponent, comparison.their_losses, best.model_dir, settings, data.eval,
                              plan.task_options, experiment.path, data.tasks)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="plots") as pool:
        drawing = pool.submit(draw_what_mattered, config, experiment, records, settings, data, plan, space)
        outcome = SweepOutcome(experiment.path, experiment.name, records, interrupted=False,
                               best_trial=next((r for r in records if best and r.trial_id == best.trial_id), None),
                               base_eval_loss=base_eval_loss(results), wall_s=wall_s, plots=[], comparison=versus,
                               publish=report, trials_csv=trials_csv,
                               best_task_losses=task_losses(results, best.trial_id, best.step) if best else {},
                               study=study, time_budget=time_budget)
        meanwhile(outcome)
        plots, mattered = drawing.result()
    return dataclasses.replace(outcome, plots=[experiment.keep(p) for p in plots + mattered.plots],
                               what_mattered=mattered)


def draw_what_mattered(config: SweepConfig, experiment: Experiment, records: list[TrialRecord],
                       settings: TrialSettings, data: SweepData, plan: ClusterPlan,
                       space: SearchSpace | None) -> tuple[list[str], StudyReport]:
    """The loss curves and hyperparameter plots, and what mattered with its own plots (matplotlib's Agg canvases,
    no pyplot state: safe off the main thread)."""
    from orchestrator.plots import write_plots
    from orchestrator.study_report import study_report
    from trainables.trial_plan import step_plan

    # drawn on this machine (from a copy of each trial's results when the experiment is in s3://...), kept with it
    plots_dir = Path(experiment.local_dir) / "plots"
    plots = [str(p) for p in write_plots(experiment.trial_results_here(), plots_dir,
                                         statuses={r.trial_id: r.status for r in records})]
    # a full trial's steps: the same pure plan every trial trains by; the steps each trial ran come from its reports
    mattered = study_report(records, plan.resources, len(step_plan(settings, data.train)),
                            plots_dir, space.distributions if space else None, config.search.seed)
    return plots, mattered


def base_eval_loss(results) -> float:
    # every trial reports the untrained model's loss, measured by its worker (the driver never holds a model)
    return next((r.metrics[BASE_EVAL_LOSS] for r in results if BASE_EVAL_LOSS in (r.metrics or {})), math.nan)


def task_losses(results, trial_id: str, step: int) -> dict[str, float]:
    """Each task's loss at the merged checkpoint (Tune flattens the reported task_losses dict into columns)."""
    prefix = f"{TASK_LOSSES}/"
    for result in results:
        history = result.metrics_dataframe
        if (result.metrics or {}).get(TRIAL_ID) != trial_id or history is None or STEP not in history:
            continue
        at_step = history[history[STEP] == step]
        return {column.split("/", 1)[1]: float(at_step[column].iloc[-1])
                for column in history.columns if column.startswith(prefix) and len(at_step)}
    return {}


def summary_record(outcome: SweepOutcome) -> dict:
    """The outcome as plain values, for W&B's summary run (nothing secret is in it)."""
    published = outcome.publish.published
    return {"best_hyperparameters": outcome.best_hyperparameters, "best_eval_loss": outcome.best_eval_loss,
            BASE_EVAL_LOSS: outcome.base_eval_loss, "best_step": outcome.best_step,
            "best_task_losses": outcome.best_task_losses,
            "best_trial": outcome.best_trial.trial_id if outcome.best_trial else None,
            "num_trials": outcome.num_trials, "stopped_early": outcome.stopped_early, "errored": outcome.errored,
            "out_of_memory": outcome.out_of_memory, "stopped_by_time_budget": outcome.stopped_by_budget,
            "ended": outcome.time_budget.line() if outcome.time_budget else "every planned trial ran",
            "best_model_dir": outcome.best_model_dir, "published_model_id": published.model_id if published else None,
            "wall_s": outcome.wall_s, **({"comparison": outcome.comparison.record()} if outcome.comparison else {}),
            **(outcome.what_mattered.record() if outcome.what_mattered else {})}
