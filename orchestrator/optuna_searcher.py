"""Tune's OptunaSearch, telling the Optuna study the truth about how each trial ended.

Tune hands the searcher every ended trial as "complete" with its last result. Stock OptunaSearch then records:
a trial ASHA stopped after two of eight evaluations as COMPLETE with that partial-budget loss, so TPE models a
truncated loss as if it were final; a trial that errored after reporting as COMPLETE too; a trial that ran out of
memory (it ends normally, so Tune does not retry it) as COMPLETE with an infinite loss. Here:

- a trial that made every planned report is COMPLETE with its last eval loss;
- with `full_reports` given (`--pruned_trials pruned`), a trial that ended earlier without an error (the
  scheduler stopped it, or the time budget) is PRUNED, with its intermediate losses at their optimizer steps;
  Optuna then takes its last one as its value and TPE ranks pruned trials below complete ones, by how far they
  got. Without it (the default: BENCHMARKS.md section 2 measured it slightly better), such a trial is COMPLETE
  with its last loss, as in stock OptunaSearch;
- a trial that errored or ran out of memory is FAIL, which TPE leaves out and a grid never repeats.

The intermediate losses are reported at the trial's optimizer step (`step`), the x axis of every other plot.

And so that the study reads on its own (optuna-dashboard, `study.trials_dataframe()`): its objective is named after
the metric (`eval_loss`, not `values_0`), and each Optuna trial carries its Ray Tune trial id as the user attribute
`ray_trial_id`, the id trials.csv, the summary and the Ray dashboard show.
"""

import logging
import math
import warnings

from optuna.trial import TrialState

from trainables.compat.ray_internals import OptunaSearchBase
from trainables.trial_contract import OUT_OF_MEMORY, STEP, TRAINING_ITERATION

logger = logging.getLogger(__name__)
RAY_TRIAL_ID = "ray_trial_id"  # the Optuna trial's user attribute that holds Ray Tune's trial id


def ended_state(result: dict | None, error: bool, full_reports: int | None) -> TrialState:
    """How a trial that Tune says is over really ended (pure: the rules above)."""
    if error or not result or result.get(OUT_OF_MEMORY):
        return TrialState.FAIL
    if full_reports is not None and int(result.get(TRAINING_ITERATION, 0)) < full_reports:
        return TrialState.PRUNED
    return TrialState.COMPLETE


class TruthfulOptunaSearch(OptunaSearchBase):  # Tune's OptunaSearch, its private state under public names
    def __init__(self, *args, full_reports: int | None = None, **kwargs):
        """full_reports: the evaluations a trial makes when it runs its whole budget (None: every trial that ends
        without an error is COMPLETE, as in stock OptunaSearch)."""
        super().__init__(*args, **kwargs)
        self.full_reports = full_reports

    def study_ready(self) -> None:
        """Stock OptunaSearch has just created (or loaded) the study, as it does whenever the space is known."""
        import optuna

        with warnings.catch_warnings():  # set_metric_names is marked experimental (Optuna 3.2 to 5.1 at least)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study.set_metric_names([self.metric])

    def suggest(self, trial_id: str):
        """Stock OptunaSearch asks the study for a trial here and keeps it under Tune's trial id."""
        suggestion = super().suggest(trial_id)
        ot_trial = self.optuna_trials.get(trial_id)
        if ot_trial is not None:
            ot_trial.set_user_attr(RAY_TRIAL_ID, trial_id)
        return suggestion

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.ended_trials or trial_id not in self.optuna_trials:
            return
        self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict) -> None:
        """One evaluation as an intermediate value at its optimizer step (a trial's last result reaches the
        searcher only through on_trial_complete, so both come here; a step is reported once)."""
        value, step = result.get(self.metric), result.get(STEP, result.get(TRAINING_ITERATION))
        reported = self.__dict__.setdefault("_reported_steps", {}).setdefault(trial_id, set())
        if value is None or step is None or int(step) in reported or not math.isfinite(float(value)):
            return
        self.optuna_trials[trial_id].report(float(value), int(step))
        reported.add(int(step))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.ended_trials or trial_id not in self.optuna_trials:
            return
        if result:
            self._report(trial_id, result)
        state = ended_state(result, error, self.full_reports)
        value = float(result[self.metric]) if state == TrialState.COMPLETE else None
        try:
            self.study.tell(self.optuna_trials[trial_id], value, state=state)
        except Exception as exc:  # as stock OptunaSearch; the trial's state is stored before the sampler's hook runs
            if "Study.stop" not in str(exc):  # a GridSampler's study.stop() once its grid is done: expected, no news
                logger.warning("Optuna could not record trial %s as %s: %s", trial_id, state.name, exc)
        self.ended_trials.add(trial_id)
        self.__dict__.get("_reported_steps", {}).pop(trial_id, None)
