"""The sweep's own gauges, set on the driver: the best eval loss so far and how many trials have ended, run and
are planned. Each trial exports its own gauges (trainables.trial_telemetry); these are what no single trial knows.

Ray exports a driver's `ray.util.metrics` gauges through its node, as it does a worker's, so Grafana reads them
beside the trials' (as `ray_<name>`; trainables.trial_telemetry.EXPORTED_METRICS lists every one).
"""

import math
from dataclasses import dataclass

from ray import tune

from trainables.trial_contract import EVAL_LOSS
from trainables.trial_telemetry import MINING_GAUGES, SWEEP_GAUGES

TAG_KEYS = ("experiment",)
ENDED_STATES = ("TERMINATED", "ERROR")

_gauges: dict = {}  # SWEEP_GAUGES or MINING_GAUGES key -> Gauge, created once per driver process


@dataclass(frozen=True)
class SweepNumbers:
    best_eval_loss: float | None  # None until a trial has reported a finite loss
    trials_finished: int
    trials_running: int
    trials_total: int


def sweep_numbers(states: list[str], lowest_losses: list[float | None], total: int) -> SweepNumbers:
    """From each trial's Tune state and its lowest eval loss so far (None or NaN before its first evaluation;
    inf from a trial out of memory)."""
    finite = [loss for loss in lowest_losses if loss is not None and math.isfinite(loss)]
    return SweepNumbers(best_eval_loss=min(finite) if finite else None,
                        trials_finished=sum(state in ENDED_STATES for state in states),
                        trials_running=sum(state == "RUNNING" for state in states),
                        trials_total=max(total, len(states)))


def _gauge(key: str, gauges: dict = SWEEP_GAUGES):
    if key not in _gauges:
        from ray.util.metrics import Gauge

        _gauges[key] = Gauge(gauges[key].name, description=gauges[key].meaning, tag_keys=TAG_KEYS)
    return _gauges[key]


def set_gauges(numbers: SweepNumbers, experiment: str) -> None:
    for key in SWEEP_GAUGES:
        value = getattr(numbers, key)
        if value is not None:
            _gauge(key).set(float(value), tags={"experiment": experiment})


class SweepMetricsCallback(tune.Callback):
    """Sets the sweep's gauges whenever a trial starts, reports or ends. It holds plain values only: Tune saves
    callbacks with the experiment, and a resumed sweep makes its gauges anew."""

    def __init__(self, experiment: str, total_trials: int):
        self.experiment, self.total_trials = experiment, total_trials

    def _update(self, trials, ending=None) -> None:
        # Tune calls on_trial_complete before it marks the trial TERMINATED
        numbers = sweep_numbers(["TERMINATED" if t is ending else t.status for t in trials],
                                [(t.metric_analysis.get(EVAL_LOSS) or {}).get("min") for t in trials],
                                self.total_trials)
        set_gauges(numbers, self.experiment)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._update(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._update(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._update(trials, ending=trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._update(trials)


def mining_numbers(round_number: int, leader_score: float, start_score: float) -> dict[str, float]:
    """A mining round's gauges (MINING_GAUGES): a score that is not a number (no leader, a base model not scored)
    is left unset, so Grafana shows the last round's value, not a NaN."""
    numbers = {"round": float(round_number), "leader_score": leader_score, "start_score": start_score}
    return {key: value for key, value in numbers.items() if math.isfinite(value)}


def set_mining_gauges(numbers: dict[str, float], mining: str) -> None:
    for key, value in numbers.items():
        _gauge(key, MINING_GAUGES).set(value, tags={"experiment": mining})
