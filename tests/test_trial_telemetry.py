"""The per-evaluation log line and the Grafana dashboard that plots the trials' gauges (no Ray started)."""

import json
import re
from pathlib import Path

from trainables.hyperparameters import Hyperparameters
from trainables.trial_telemetry import GAUGES, TAG_KEYS, emit, format_line, prometheus_names, tags

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


def test_every_grafana_panel_plots_a_metric_trial_telemetry_exports():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    plotted = set()
    for panel in panels:
        assert panel["datasource"]["type"] == "prometheus"
        for target in panel["targets"]:
            names = _metric_names(target["expr"])
            assert names and names <= prometheus_names(), (panel["title"], target["expr"])
            assert "{{trial_id}}" in target["legendFormat"]
            plotted |= names
    # every gauge has its panel, and the experiment selector reads an exported metric too
    assert plotted == prometheus_names()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert _metric_names(variables["experiment"]["definition"]) <= prometheus_names()
    assert variables["datasource"]["query"] == "prometheus"
