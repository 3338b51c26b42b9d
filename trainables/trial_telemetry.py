"""What a trial shows in the Ray dashboard: its actor's name, one log line per evaluation, and Prometheus gauges.

- `named_trials` gives the trial's actor a repr of `trial <id> lr=... r=... alpha=...`: the Actors page shows it, and
  Ray prefixes the actor's log lines with it (`(trial 254c6de9 lr=6.90e-04 r=64 alpha=64 pid=...)`). Ray captures
  the repr once, when the actor is created, so the sweep runs one actor per trial (Tune's `reuse_actors=False`);
  with --reuse_workers a worker runs trial after trial and is called `lora trial worker`.
- `emit` prints `[trial <id>] lr=... r=... alpha=... step=... eval_loss=... train_loss=... tokens/s=... mfu=...`
  (tokens/s counts real tokens only; mfu on GPUs whose peak is known; peak memory beside the planner's estimate)
  to the worker's stderr: the tab the dashboard's actor page opens its logs on (the driver's console and a
  Ray job's driver log show it too, deduplicated by Ray);
- it sets `ray.util.metrics` gauges tagged with the trial id, the experiment and the hyperparameters, which
  Ray exports to Prometheus as `ray_<name>` (`configs/grafana/lora_sweep_dashboard.json` plots them).

`EXPORTED_METRICS` lists every gauge the sweep exports, the driver's (orchestrator.sweep_metrics) included, with
what it means: the one list the Grafana dashboard, the docs and the tests read.
"""

import math
import re
import sys
from dataclasses import dataclass

from trainables.hyperparameters import NAMES, Hyperparameters
from trainables.trial_contract import (EVAL_LOSS, MEMORY_ESTIMATE_GB, MFU, PEAK_GPU_MEM_GB, PEAK_RSS_MB, RANK_LOSS,
                                       STEP, TASK_LOSSES, TOKENS_PER_S, TRAIN_LOSS)


@dataclass(frozen=True)
class ExportedMetric:
    name: str      # the ray.util.metrics gauge; Prometheus sees "ray_" + name
    meaning: str   # one line: the gauge's description, and the docs' table


PROMETHEUS_PREFIX = "ray_"
# report metric -> its gauge, set by every trial at every evaluation (tagged by TAG_KEYS)
TRIAL_GAUGES = {
    EVAL_LOSS: ExportedMetric("lora_trial_eval_loss", "the trial's eval loss at its latest evaluation "
                                "(validator-style)"),
    RANK_LOSS: ExportedMetric("lora_trial_rank_loss", "the trial's loss on the fixed subset of the held-out set "
                                "every trial is ranked on, at its latest evaluation"),
    TRAIN_LOSS: ExportedMetric("lora_trial_train_loss", "the trial's mean training loss since its previous "
                                 "evaluation"),
    TOKENS_PER_S: ExportedMetric("lora_trial_tokens_per_s", "real (unpadded) tokens trained per second"),
    STEP: ExportedMetric("lora_trial_step", "the optimizer step of the trial's latest evaluation"),
    PEAK_RSS_MB: ExportedMetric("lora_trial_peak_rss_mb", "the trial worker's peak resident memory, MiB"),
    PEAK_GPU_MEM_GB: ExportedMetric("lora_trial_peak_gpu_mem_gb", "the trial's peak GPU memory, GB (GPU trials)"),
    MEMORY_ESTIMATE_GB: ExportedMetric("lora_trial_memory_estimate_gb", "the memory planner's estimate for the "
                                         "trial, GB"),
    MFU: ExportedMetric("lora_trial_mfu", "model FLOPs utilization over the GPU's bf16 peak (GPUs whose peak "
                          "is known)"),
}
# the driver's gauges (orchestrator.sweep_metrics sets them from a Tune callback; tagged by experiment)
SWEEP_GAUGES = {
    "best_eval_loss": ExportedMetric("lora_sweep_best_eval_loss", "the lowest eval loss any trial of the sweep "
                                     "has reported so far"),
    "trials_finished": ExportedMetric("lora_sweep_trials_finished", "trials that have ended: finished, stopped "
                                      "early, failed or out of memory"),
    "trials_running": ExportedMetric("lora_sweep_trials_running", "trials training now"),
    "trials_total": ExportedMetric("lora_sweep_trials_total", "trials the sweep will run"),
}
# a mining run's gauges (orchestrator.mine sets them before each round; tagged by experiment: the mining folder's name)
MINING_GAUGES = {
    "round": ExportedMetric("lora_mining_round", "the round a mining run (python -m orchestrator.mine) is in"),
    "leader_score": ExportedMetric("lora_mining_leader_score", "the competition leader's score on the round's "
                                   "held-out samples"),
    "start_score": ExportedMetric("lora_mining_start_score", "the score of the model the round starts from, on "
                                  "the round's held-out samples"),
}
EXPORTED_METRICS = [*TRIAL_GAUGES.values(), *SWEEP_GAUGES.values(), *MINING_GAUGES.values()]
GAUGES = {metric: gauge.name for metric, gauge in TRIAL_GAUGES.items()}  # report metric -> gauge name
TAG_KEYS = ("trial_id", "experiment", *NAMES)
# (report metric, label in the log line, format)
LINE_FIELDS = [(STEP, STEP, "d"), (EVAL_LOSS, EVAL_LOSS, ".4f"), (RANK_LOSS, RANK_LOSS, ".4f"),
               (TRAIN_LOSS, TRAIN_LOSS, ".4f"),
               (TOKENS_PER_S, "tokens/s", ".0f"), (MFU, MFU, ".1%"), (PEAK_RSS_MB, PEAK_RSS_MB, ".0f"),
               (PEAK_GPU_MEM_GB, PEAK_GPU_MEM_GB, ".2f"), (MEMORY_ESTIMATE_GB, "estimated_gb", ".2f")]
# what a trial's folder name may hold: one safe path component, locally and in object storage
FOLDER_CHARACTERS = re.compile(r"[^A-Za-z0-9._=-]")

_gauges: dict = {}  # metric -> Gauge, created once per worker process (workers run many trials)


def prometheus_names(metrics=TRIAL_GAUGES.values()) -> set[str]:
    """The names Prometheus shows for `metrics` (by default the trials' gauges)."""
    return {PROMETHEUS_PREFIX + metric.name for metric in metrics}


def trial_label(trial_id: str, config: dict) -> str:
    """`254c6de9 lr=6.90e-04 r=64 alpha=64`: how every line, the Actors page and a folder name name a trial (the
    hyperparameters left out when a config lacks them)."""
    if set(NAMES) <= set(config or {}):
        return f"{trial_id} {Hyperparameters.from_mapping(config).compact()}"
    return trial_id


def trial_folder_name(trial_id: str, config: dict) -> str:
    """`trial_254c6de9_lr=6.90e-04_r=64_alpha=64`: the trial's folder in the experiment. Tune's own name printed the
    learning rate to 4 decimals (`learning_rate=0.0000`)."""
    return FOLDER_CHARACTERS.sub("_", "trial_" + trial_label(trial_id, config).replace(" ", "_"))


def trial_dirname(trial) -> str:
    """TuneConfig's `trial_dirname_creator` (a module-level function: Tune saves it with the experiment)."""
    return trial_folder_name(trial.trial_id, trial.config)


def quiet_exit_races(unraisable) -> None:
    """A trial actor's sys.unraisablehook. Ray ends a finished trial's actor with SIGTERM, whose handler raises
    SystemExit wherever the worker is; inside a weakref callback Python cannot raise it, and printed "Exception
    ignored" with a traceback under a trial that had ended well. That SystemExit is dropped; anything else is
    printed as Python prints it."""
    if not isinstance(unraisable.exc_value, SystemExit):
        sys.__unraisablehook__(unraisable)


def named_trials(trainable, per_trial: bool = True):
    """A function trainable as Tune runs it (its `ImplicitFunc` class), with the actor's repr naming the trial:
    `trial 254c6de9 lr=6.90e-04 r=64 alpha=64`. Ray takes an actor's repr once, after `__init__` (where Tune hands
    the trial its id and config), for the Actors page and the log prefix; so it names the trial only when each
    trial has an actor of its own. The class keeps the function's name: Tune registers the trainable by it, and a
    --resume finds the experiment's trainable by that name (a private part of Ray's: where this Ray lacks it, Tune's
    own class, with one line saying so)."""
    from ray.tune.trainable.function_trainable import wrap_function

    from trainables.compat import ray_internals

    base = wrap_function(trainable)
    name = ray_internals.function_trainable_name(base)
    if name is None:
        return base

    class NamedTrial(base):
        def setup(self, config, *args, **kwargs):
            sys.unraisablehook = quiet_exit_races
            return super().setup(config, *args, **kwargs)

        def __repr__(self) -> str:
            # a worker reused across trials (--reuse_workers) keeps the repr of its first: it is named for its job
            return "trial " + trial_label(self.trial_id, self.config) if per_trial else "lora trial worker"

    NamedTrial.__name__ = NamedTrial.__qualname__ = name
    return NamedTrial


def format_line(trial_id: str, hyperparameters: Hyperparameters, metrics: dict) -> str:
    """The one log line of an evaluation; metrics the report lacks are left out."""
    parts = [f"[trial {trial_id}]", hyperparameters.compact()]
    for key, label, spec in LINE_FIELDS:
        value = metrics.get(key)
        if value is not None:
            value = int(value) if spec == "d" else float(value)
            parts.append(f"{label}={value:{spec}}")
        if key == EVAL_LOSS:  # a competition of weighted tasks: each task's loss beside the score
            parts.extend(f"{task}={loss:.4f}" for task, loss in (metrics.get(TASK_LOSSES) or {}).items())
    return " ".join(parts)


def tags(trial_id: str, hyperparameters: Hyperparameters, experiment: str) -> dict:
    return {"trial_id": trial_id, "experiment": experiment, "learning_rate": f"{hyperparameters.learning_rate:.2e}",
            "r": str(hyperparameters.r), "alpha": str(hyperparameters.alpha)}


def _gauge(metric: str):
    if metric not in _gauges:
        from ray.util.metrics import Gauge

        _gauges[metric] = Gauge(GAUGES[metric], description=TRIAL_GAUGES[metric].meaning, tag_keys=TAG_KEYS)
    return _gauges[metric]


def _experiment_name() -> str:
    try:
        from ray import tune

        return tune.get_context().get_experiment_name() or ""
    except Exception:  # outside a Tune session (a plain call, a test): the tag stays empty
        return ""


def emit(trial_id: str, hyperparameters: Hyperparameters, metrics: dict) -> None:
    """Print the evaluation's line and set the trial's gauges (when Ray is running in this process)."""
    print(format_line(trial_id, hyperparameters, metrics), file=sys.stderr, flush=True)
    import ray

    if not ray.is_initialized():
        return
    labels = tags(trial_id, hyperparameters, _experiment_name())
    for metric in GAUGES:
        value = metrics.get(metric)
        if value is not None and math.isfinite(float(value)):
            _gauge(metric).set(float(value), tags=labels)
