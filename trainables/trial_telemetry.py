"""What a trial shows in the Ray dashboard: one log line per evaluation, and Prometheus gauges.

The dashboard names a trial's actor by its class (`ImplicitFunc`) and a repr (`lora_trainable`) that Ray
captures once, when the actor is created; Tune reuses actors across trials, so the actor cannot name the
trial it runs now. The trial's identity therefore travels in what the actor writes:

- `emit` prints `[trial <id>] lr=... r=... alpha=... step=... eval_loss=... train_loss=... tokens/s=... mfu=...`
  (tokens/s counts real tokens only; mfu on GPUs whose peak is known; peak memory beside the planner's estimate)
  to the worker's stderr: the tab the dashboard's actor page opens its logs on (the driver's console and a
  Ray job's driver log show it too, deduplicated by Ray);
- it sets `ray.util.metrics` gauges tagged with the trial id, the experiment and the hyperparameters, which
  Ray exports to Prometheus as `ray_<name>` (`configs/grafana/lora_sweep_dashboard.json` plots them).
"""

import math
import sys

from trainables.hyperparameters import NAMES, Hyperparameters

# report metric -> gauge name; Prometheus sees "ray_" + the gauge name
GAUGES = {
    "eval_loss": "lora_trial_eval_loss",
    "train_loss": "lora_trial_train_loss",
    "tokens_per_s": "lora_trial_tokens_per_s",
    "step": "lora_trial_step",
    "peak_rss_mb": "lora_trial_peak_rss_mb",
    "peak_gpu_mem_gb": "lora_trial_peak_gpu_mem_gb",
    "memory_estimate_gb": "lora_trial_memory_estimate_gb",
    "mfu": "lora_trial_mfu",
}
PROMETHEUS_PREFIX = "ray_"
TAG_KEYS = ("trial_id", "experiment", *NAMES)
# (report metric, label in the log line, format)
LINE_FIELDS = [("step", "step", "d"), ("eval_loss", "eval_loss", ".4f"), ("train_loss", "train_loss", ".4f"),
               ("tokens_per_s", "tokens/s", ".0f"), ("mfu", "mfu", ".1%"), ("peak_rss_mb", "peak_rss_mb", ".0f"),
               ("peak_gpu_mem_gb", "peak_gpu_mem_gb", ".2f"), ("memory_estimate_gb", "estimated_gb", ".2f")]

_gauges: dict = {}  # metric -> Gauge, created once per worker process (workers run many trials)


def prometheus_names() -> set[str]:
    return {PROMETHEUS_PREFIX + name for name in GAUGES.values()}


def format_line(trial_id: str, hyperparameters: Hyperparameters, metrics: dict) -> str:
    """The one log line of an evaluation; metrics the report lacks are left out."""
    parts = [f"[trial {trial_id}]", hyperparameters.compact()]
    for key, label, spec in LINE_FIELDS:
        value = metrics.get(key)
        if value is not None:
            value = int(value) if spec == "d" else float(value)
            parts.append(f"{label}={value:{spec}}")
        if key == "eval_loss":  # a competition of weighted tasks: each task's loss beside the score
            parts.extend(f"{task}={loss:.4f}" for task, loss in (metrics.get("task_losses") or {}).items())
    return " ".join(parts)


def tags(trial_id: str, hyperparameters: Hyperparameters, experiment: str) -> dict:
    return {"trial_id": trial_id, "experiment": experiment, "learning_rate": f"{hyperparameters.learning_rate:.2e}",
            "r": str(hyperparameters.r), "alpha": str(hyperparameters.alpha)}


def _gauge(metric: str):
    if metric not in _gauges:
        from ray.util.metrics import Gauge

        _gauges[metric] = Gauge(GAUGES[metric], description=f"the trial's {metric} at its latest evaluation",
                                tag_keys=TAG_KEYS)
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
