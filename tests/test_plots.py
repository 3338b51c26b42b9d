"""orchestrator.plots on a fake Ray Tune experiment folder: reading the curves, picking the best, drawing PNGs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.plots import (CURVES_PNG, HYPERPARAMETERS_PNG, best_trial, curves_figure,
                                hyperparameters_figure, read_trials, untrained_loss, write_plots)
from orchestrator.trial_records import TrialStatus
from trainables.hyperparameters import Hyperparameters

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def report(step, eval_loss, trial_id, **extra):
    return json.dumps({"eval_loss": eval_loss, "train_loss": eval_loss + 0.1, "step": step,
                       "tokens_per_s": 2000.0, "training_iteration": step // 10, "trial_id": trial_id, **extra})


def make_trial(root, name, params, lines):
    folder = root / name
    folder.mkdir()
    if params is not None:
        (folder / "params.json").write_text(json.dumps(params))
    if lines is not None:
        (folder / "result.json").write_text("".join(line + "\n" for line in lines))
    return folder


@pytest.fixture
def experiment(tmp_path):
    """Three trials with results (b has the lowest loss at any step, a the lowest last one; c is still
    writing), plus folders and files to skip."""
    root = tmp_path / "lora-sweep-test"
    root.mkdir()
    make_trial(root, "lora_trainable_aaaa_1", {"learning_rate": 1e-5, "r": 8, "alpha": 16},
               [report(10, 6.5, "aaaa"), report(20, 6.2, "aaaa"), report(30, 5.2, "aaaa")])
    # b: best at step 20 (5.1), worse at step 30; a blank line in the middle
    make_trial(root, "lora_trainable_bbbb_2", {"learning_rate": 3e-4, "r": 64, "alpha": 32},
               [report(10, 5.9, "bbbb"), "", report(20, 5.1, "bbbb"), report(30, 5.3, "bbbb")])
    # c: still writing -- the last line is cut off mid-object, then a trailing blank line
    folder = make_trial(root, "lora_trainable_cccc_3", {"learning_rate": 1e-4, "r": 16, "alpha": 8},
                        [report(10, 6.1, "cccc")])
    with open(folder / "result.json", "a") as f:
        f.write(report(20, 1.0, "cccc")[:40])
    make_trial(root, "lora_trainable_dddd_4", {"learning_rate": 1e-3, "r": 32, "alpha": 64}, None)  # no results
    make_trial(root, "lora_trainable_eeee_5", None, [report(10, 0.5, "eeee")])  # no params
    make_trial(root, "lora_trainable_ffff_6", {"learning_rate": 2e-4, "r": 8, "alpha": 8}, [])  # nothing reported
    (root / "best_model").mkdir()
    (root / "experiment_state-2026.json").write_text("{}")
    (root / "tuner.pkl").write_bytes(b"\x80\x04")
    return root


def test_read_trials_parses_exactly_the_complete_reports(experiment):
    trials = read_trials(experiment)

    assert [t.name for t in trials] == ["lora_trainable_aaaa_1", "lora_trainable_bbbb_2", "lora_trainable_cccc_3"]
    assert [t.trial_id for t in trials] == ["aaaa", "bbbb", "cccc"]
    assert trials[0].hyperparameters == Hyperparameters(learning_rate=1e-5, r=8, alpha=16)
    assert trials[0].points == [(10, 6.5), (20, 6.2), (30, 5.2)]
    assert trials[1].points == [(10, 5.9), (20, 5.1), (30, 5.3)]
    assert trials[2].points == [(10, 6.1)]  # the partial line (eval_loss 1.0) is ignored
    assert all(isinstance(step, int) and isinstance(loss, float) for t in trials for step, loss in t.points)


def test_read_trials_keeps_the_latest_report_of_a_repeated_step_and_drops_non_finite_losses(tmp_path):
    # a trial restored from its step-10 checkpoint reports step 20 again; a diverged report is NaN
    make_trial(tmp_path, "lora_trainable_rrrr_1", {"learning_rate": 1e-4, "r": 8, "alpha": 8},
               [report(10, 6.0, "rrrr"), report(20, 5.8, "rrrr"), report(20, 5.7, "rrrr"),
                report(30, float("nan"), "rrrr"), report(40, 5.5, "rrrr")])

    [trial] = read_trials(tmp_path)

    assert trial.points == [(10, 6.0), (20, 5.7), (40, 5.5)]


def test_best_trial_is_the_lowest_eval_loss_at_any_step(experiment):
    trials = read_trials(experiment)

    best = best_trial(trials)

    # a ends lowest (5.2 < b's last 5.3), but b's step-20 report (5.1) is the lowest at any step
    assert best.trial_id == "bbbb"
    assert (best.best_step, best.best_eval_loss) == (20, 5.1)
    assert best.label == "lr=3.00e-04 r=64 alpha=32"
    assert best_trial([]) is None


def test_the_best_trial_is_highlighted_in_both_figures(experiment):
    trials = read_trials(experiment)

    curves = curves_figure(trials)
    lines = curves.axes[0].get_lines()
    thick = [line for line in lines if line.get_linewidth() >= 3]
    assert [line.get_label() for line in thick] == ["best: lr=3.00e-04 r=64 alpha=32 (5.1000)"]
    assert list(thick[0].get_xdata()) == [10, 20, 30]
    assert len([line for line in lines if line.get_linestyle() != "None"]) == 3  # one line per trial
    legend_texts = [text.get_text() for text in curves.axes[0].get_legend().get_texts()]
    assert "lr=1.00e-05 r=8 alpha=16" in legend_texts and "lr=1.00e-04 r=16 alpha=8" in legend_texts

    panels = hyperparameters_figure(trials).axes
    assert [axes.get_xlabel() for axes in panels] == ["learning rate", "r", "alpha"]
    assert [axes.get_xscale() for axes in panels] == ["log", "log", "log"]
    assert [tick.get_text() for tick in panels[1].get_xticklabels()] == ["8", "16", "64"]
    for axes, value in zip(panels, (3e-4, 64, 32)):
        everyone, star = axes.collections
        assert sorted(everyone.get_offsets()[:, 1]) == [5.1, 5.2, 6.1]  # each trial's best eval loss
        assert star.get_offsets().tolist() == [[value, 5.1]]


@pytest.fixture
def ended_experiment(tmp_path):
    """Four trials whose reports carry the untrained model's loss (6.9): one ran to the end (the best), ASHA stopped
    one after two evaluations, one failed after two, one ran out of memory after one."""
    root = tmp_path / "ended"
    root.mkdir()
    trials = {"done": (1e-4, [6.0, 5.0, 4.0, 3.5]), "asha": (1e-5, [6.7, 6.6]), "boom": (1e-3, [6.2, 5.9]),
              "oom": (3e-4, [6.1])}
    for i, (trial_id, (rate, losses)) in enumerate(trials.items()):
        make_trial(root, f"lora_trainable_{trial_id}_{i}", {"learning_rate": rate, "r": 8 * (i + 1), "alpha": 16},
                   [report(10 * (n + 1), loss, trial_id, base_eval_loss=6.9) for n, loss in enumerate(losses)])
    return root


STATUSES = {"done": TrialStatus.FINISHED, "asha": TrialStatus.STOPPED, "boom": TrialStatus.FAILED,
            "oom": TrialStatus.OUT_OF_MEMORY}


def test_the_untrained_loss_is_a_labelled_reference_in_both_figures(ended_experiment):
    trials = read_trials(ended_experiment, STATUSES)
    assert untrained_loss(trials) == 6.9 and untrained_loss([]) != untrained_loss([])  # NaN when unknown

    axes = curves_figure(trials).axes[0]
    [reference] = [line for line in axes.get_lines() if line.get_label().startswith("untrained model")]
    assert list(reference.get_ydata()) == [6.9, 6.9] and reference.get_label() == "untrained model (6.9000)"
    assert "untrained model 6.9000" in [text.get_text() for text in axes.texts]  # named on the line itself
    assert "untrained model (6.9000)" in [text.get_text() for text in axes.get_legend().get_texts()]

    figure = hyperparameters_figure(trials)
    for panel in figure.axes:
        assert [list(line.get_ydata()) for line in panel.get_lines()] == [[6.9, 6.9]]
    assert "untrained model (6.9000)" in [text.get_text() for text in figure.legends[0].get_texts()]


def test_trials_that_did_not_run_to_the_end_are_drawn_apart_and_explained(ended_experiment):
    trials = read_trials(ended_experiment, STATUSES)
    assert {t.trial_id: t.status for t in trials} == STATUSES

    axes = curves_figure(trials).axes[0]
    curves = {line.get_label(): line for line in axes.get_lines() if len(line.get_xdata()) > 1}
    assert curves["best: lr=1.00e-04 r=8 alpha=16 (3.5000)"].get_linestyle() == "-"
    assert curves["lr=1.00e-05 r=16 alpha=16"].get_linestyle() == "--"  # stopped by ASHA: dashed
    assert curves["lr=1.00e-03 r=24 alpha=16"].get_linestyle() == ":"   # failed: dotted
    # a marker at each unfinished trial's last evaluation: x for the scheduler's stop, red for failures
    ends = {(line.get_marker(), float(line.get_xdata()[0]), float(line.get_ydata()[0])): line.get_color()
            for line in axes.get_lines() if len(line.get_xdata()) == 1 and line.get_marker() in ("x", "X", "v")}
    assert set(ends) == {("x", 20, 6.6), ("X", 20, 5.9), ("v", 10, 6.1)}
    assert ends[("X", 20, 5.9)] == ends[("v", 10, 6.1)] == "red"
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert "stopped early by ASHA (x: its last evaluation)" in legend
    assert "failed (red X: its last evaluation)" in legend and "out of memory (red triangle: its last evaluation)" \
        in legend
    assert not any("time_budget" in entry for entry in legend)  # only the ways of ending this sweep shows

    figure = hyperparameters_figure(trials)
    markers = {collection.get_label(): collection for collection in figure.axes[0].collections}
    assert sorted(markers) == ["best: lr=1.00e-04 r=8 alpha=16", "failed", "out of memory", "ran to the end",
                               "stopped early by ASHA"]
    assert markers["stopped early by ASHA"].get_offsets().tolist() == [[1e-5, 6.6]]  # its best loss, marked x
    assert markers["ran to the end"].get_offsets().tolist() == [[1e-4, 3.5]]
    assert [text.get_text() for text in figure.legends[0].get_texts()] == [
        "untrained model (6.9000)", "ran to the end", "stopped early by ASHA", "failed", "out of memory",
        "best: lr=1.00e-04 r=8 alpha=16"]


def test_write_plots_marks_the_statuses_it_is_given(ended_experiment):
    written = write_plots(ended_experiment, statuses=STATUSES)
    assert [p.name for p in written] == [CURVES_PNG, HYPERPARAMETERS_PNG]
    assert all(p.read_bytes()[:8] == PNG_SIGNATURE for p in written)


def test_write_plots_writes_two_valid_pngs_into_plots_by_default(experiment):
    import matplotlib.image

    written = write_plots(experiment)

    assert written == [experiment / "plots" / CURVES_PNG, experiment / "plots" / HYPERPARAMETERS_PNG]
    for path in written:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        height, width, channels = matplotlib.image.imread(path).shape
        assert 400 <= height <= 1200 and 600 <= width <= 2000 and channels in (3, 4)
    # the plots folder is no trial: a second run reads the same three trials and overwrites in place
    assert [t.trial_id for t in read_trials(experiment)] == ["aaaa", "bbbb", "cccc"]
    assert write_plots(experiment) == written


def test_write_plots_into_a_given_folder_and_nothing_for_no_trials(experiment, tmp_path):
    out = tmp_path / "elsewhere" / "pictures"
    written = write_plots(experiment, out)
    assert sorted(p.name for p in out.iterdir()) == sorted([CURVES_PNG, HYPERPARAMETERS_PNG])
    assert all(p.parent == out for p in written)

    empty = tmp_path / "empty-experiment"
    empty.mkdir()
    make_trial(empty, "lora_trainable_gggg_1", {"learning_rate": 1e-4, "r": 8, "alpha": 8}, None)
    assert write_plots(empty) == []
    assert not (empty / "plots").exists()


def test_a_single_trial_with_one_report_still_draws(tmp_path):
    make_trial(tmp_path, "t", {"learning_rate": 1e-4, "r": 8, "alpha": 8}, [report(10, 6.0, "only")])

    written = write_plots(tmp_path)

    assert [p.name for p in written] == [CURVES_PNG, HYPERPARAMETERS_PNG]
    assert all(p.read_bytes()[:8] == PNG_SIGNATURE for p in written)


def test_drawing_is_headless_without_ray_or_pyplot(experiment):
    # a fresh interpreter with no display and an interactive backend asked for: still writes PNGs
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["MPLBACKEND"] = "TkAgg"
    code = ("import sys; from orchestrator.plots import write_plots; "
            f"print(len(write_plots({str(experiment)!r}))); "
            "print(sorted(m for m in ('ray', 'matplotlib.pyplot') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["2", "[]"]
    assert (experiment / "plots" / CURVES_PNG).read_bytes()[:8] == PNG_SIGNATURE
