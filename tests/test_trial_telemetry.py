"""The per-evaluation log line, how a trial is named (actor, folder), the list of exported metrics and the Grafana
dashboard that plots them (no Ray started; tests/test_sweep.py and tests/test_dashboard_browser.py see a real sweep)."""

import json
import math
import re
from pathlib import Path

from trainables.hyperparameters import Hyperparameters
from trainables.trial_telemetry import (EXPORTED_METRICS, GAUGES, MINING_GAUGES, SWEEP_GAUGES, TAG_KEYS,
                                        TRIAL_GAUGES, emit, format_line, named_trials, prometheus_names, tags,
                                        trial_folder_name, trial_label)

DASHBOARD = Path(__file__).resolve().parents[1] / "configs" / "grafana" / "lora_sweep_dashboard.json"
HYPERPARAMETERS = Hyperparameters(learning_rate=2.1e-4, r=16, alpha=32)
METRICS = {"eval_loss": 3.81234, "train_loss": 3.9, "tokens_per_s": 1234.4, "step": 20, "peak_rss_mb": 553.2,
           "base_eval_loss": 6.8, "learning_rate_now": 1e-4, "train_s": 1.5}


def test_the_line_names_the_trial_its_hyperparameters_and_the_evaluation():
    assert format_line("3f2a_00001", HYPERPARAMETERS, METRICS) == (
        "[trial 3f2a_00001] lr=2.10e-04 r=16 alpha=32 step=20 eval_loss=3.8123 train_loss=3.9000 tokens/s=1234 "
        "peak_rss_mb=553")


def test_the_line_leaves_out_what_the_report_lacks_and_shows_gpu_memory_when_reported():
    line = format_line("abc", HYPERPARAMETERS, {"step": 10, "eval_loss": 4.0, "peak_gpu_mem_gb": 1.234})
    assert line == "[trial abc] lr=2.10e-04 r=16 alpha=32 step=10 eval_loss=4.0000 peak_gpu_mem_gb=1.23"


def test_a_task_competitions_line_shows_each_tasks_loss_beside_the_score():
    line = format_line("abc", HYPERPARAMETERS, {"step": 5, "eval_loss": 2.5, "task_losses": {"MATH": 2.0, "CODE": 3.0}})
    assert "eval_loss=2.5000 MATH=2.0000 CODE=3.0000" in line


def test_emit_prints_one_flushed_line_to_stderr_without_a_running_ray(capsys):
    emit("abc", HYPERPARAMETERS, METRICS)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == format_line("abc", HYPERPARAMETERS, METRICS) + "\n"


def test_tags_cover_every_tag_key_as_text():
    labels = tags("abc", HYPERPARAMETERS, "exp")
    assert set(labels) == set(TAG_KEYS)
    assert labels == {"trial_id": "abc", "experiment": "exp", "learning_rate": "2.10e-04", "r": "16", "alpha": "32"}


def test_prometheus_names_carry_rays_prefix():
    # Ray exports a ray.util.metrics gauge named N as ray_N (checked against a live export in
    # tests/test_dashboard_browser.py)
    assert prometheus_names() == {"ray_" + name for name in GAUGES.values()}


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bray_[a-z0-9_]+\b", expr))


def test_every_grafana_panel_plots_an_exported_metric_and_every_metric_has_a_panel():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    exported = prometheus_names(EXPORTED_METRICS)
    plotted = set()
    for panel in panels:
        assert panel["datasource"]["type"] == "prometheus"
        for target in panel["targets"]:
            names = _metric_names(target["expr"])
            assert names and names <= exported, (panel["title"], target["expr"])
            # a trial's gauge is told apart by trial, the sweep's by experiment
            assert ("{{trial_id}}" if names <= prometheus_names() else "{{experiment}}") in target["legendFormat"]
            plotted |= names
    # every gauge has its panel, and the experiment selector reads an exported metric too
    assert plotted == exported
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert _metric_names(variables["experiment"]["definition"]) <= exported
    assert variables["datasource"]["query"] == "prometheus"


def test_one_list_names_every_exported_metric_once_with_its_meaning():
    names = [m.name for m in EXPORTED_METRICS]
    assert len(names) == len(set(names)) == len(TRIAL_GAUGES) + len(SWEEP_GAUGES) + len(MINING_GAUGES)
    assert all(m.meaning and "\n" not in m.meaning for m in EXPORTED_METRICS)
    assert {f"lora_sweep_{key}" for key in SWEEP_GAUGES} == {m.name for m in SWEEP_GAUGES.values()}


def test_a_trial_is_named_by_its_id_and_hyperparameters():
    config = {"learning_rate": 6.9e-4, "r": 64, "alpha": 64, "other": "ignored"}
    assert trial_label("254c6de9", config) == "254c6de9 lr=6.90e-04 r=64 alpha=64"
    assert trial_label("254c6de9", {}) == "254c6de9"


def test_a_trials_folder_is_one_safe_path_component_with_its_id_and_a_readable_learning_rate():
    config = {"learning_rate": 6.9e-4, "r": 64, "alpha": 64}
    assert trial_folder_name("254c6de9", config) == "trial_254c6de9_lr=6.90e-04_r=64_alpha=64"
    # Tune's own name printed learning_rate=0.0000 for every rate below 5e-5
    assert trial_folder_name("a", {**config, "learning_rate": 1e-10}) == "trial_a_lr=1.00e-10_r=64_alpha=64"
    odd = trial_folder_name("../x y/z", config)
    assert "/" not in odd and " " not in odd and odd.startswith("trial_.._x_y_z_lr=")


def test_named_trials_keep_the_functions_name_for_tune_and_a_resume():
    from ray.tune.trainable import FunctionTrainable

    def lora_trainable(config):
        pass

    trial_class = named_trials(lora_trainable)
    assert issubclass(trial_class, FunctionTrainable) and trial_class.__name__ == "lora_trainable"
    assert "__repr__" in vars(trial_class)  # Ray names the actor by its repr (seen on a real sweep elsewhere)


def test_the_sweeps_gauges_count_ended_and_running_trials_and_take_the_lowest_finite_loss():
    from orchestrator.sweep_metrics import SweepNumbers, sweep_numbers

    states = ["TERMINATED", "ERROR", "RUNNING", "PENDING", "TERMINATED"]
    assert sweep_numbers(states, [3.5, None, 3.25, None, math.inf], total=8) == SweepNumbers(
        best_eval_loss=3.25, trials_finished=3, trials_running=1, trials_total=8)
    assert sweep_numbers([], [], total=4) == SweepNumbers(None, 0, 0, 4)
    assert set(SweepNumbers.__dataclass_fields__) == set(SWEEP_GAUGES)  # a gauge for every number


def test_a_mining_rounds_gauges_leave_a_score_that_is_not_a_number_unset():
    from orchestrator.sweep_metrics import mining_numbers

    assert mining_numbers(3, 4.25, 3.5) == {"round": 3.0, "leader_score": 4.25, "start_score": 3.5}
    assert mining_numbers(1, math.nan, math.nan) == {"round": 1.0}  # no leader, and the base model not scored
    assert set(mining_numbers(2, 1.0, 2.0)) == set(MINING_GAUGES)  # a gauge for every number


def test_a_trial_actor_drops_only_the_systemexit_of_its_sigterm_race(capsys):
    import sys

    from trainables.trial_telemetry import quiet_exit_races

    class RaisesWhenCollected:  # Python reports what __del__ raises through sys.unraisablehook, as a weakref callback's
        def __init__(self, error: BaseException):
            self.error = error

        def __del__(self):
            raise self.error

    before = sys.unraisablehook
    sys.unraisablehook = quiet_exit_races  # what NamedTrial.setup installs in a trial's actor
    try:
        RaisesWhenCollected(SystemExit(1))  # Ray's SIGTERM handler, raised where it cannot be
        assert capsys.readouterr().err == ""
        RaisesWhenCollected(ValueError("a real fault"))
        assert "ValueError: a real fault" in capsys.readouterr().err
    finally:
        sys.unraisablehook = before
