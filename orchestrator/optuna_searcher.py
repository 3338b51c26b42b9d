"""Tune's OptunaSearch, telling Optuna the truth about trials that ran out of memory.

Such a trial ends normally (Tune must not retry it: it would run out again) with a last report whose
`out_of_memory` says where. Tune hands OptunaSearch that report as a completed result, which Optuna would
record as a COMPLETE trial with an infinite loss; here it is recorded as FAIL, which TPE leaves out of its
model of good and bad regions, and which a grid never repeats.
"""

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch


class OutOfMemoryAwareOptunaSearch(OptunaSearch):
    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and result.get("out_of_memory") and trial_id in self._ot_trials:
            if trial_id not in self._completed_trials:
                self._ot_study.tell(self._ot_trials[trial_id], None, state=TrialState.FAIL)
                self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)
