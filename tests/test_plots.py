"""orchestrator.plots on a fake Ray Tune experiment folder: reading the curves, picking the best, drawing PNGs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.plots import (CURVES_PNG, HYPERPARAMETERS_PNG, best_trial, curves_figure,
                                hyperparameters_figure, read_trials, write_plots)
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
