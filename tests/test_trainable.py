import json
import shutil
from pathlib import Path

import pytest

from trainables.lora_trial import (TRAINER_STATE, TrainingSettings, TrialSettings, model_pair_losses, planned_reports,
                                   step_plan, train_lora)


def settings_for(model_dir, **overrides) -> TrialSettings:
    training = {"num_epochs": 1, "batch_size": 8, "accumulation_steps": 1, "eval_steps": 5, **overrides}
    return TrialSettings(model_dir=str(model_dir), training=TrainingSettings(**training))


def run(hyperparameters, settings, data, resume_from=None, stop_after=None, keep=None):
    """Train, collecting reports; optionally stop after `stop_after` reports, keeping the last checkpoint."""
    reports = []

    class Stop(Exception):
        pass

    def report(metrics, folder: Path):
        reports.append(metrics)
        if keep is not None:
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(folder, keep)
        if stop_after is not None and len(reports) == stop_after:
            raise Stop

    try:
        train_lora(hyperparameters, settings, data, report, resume_from=resume_from)
    except Stop:
        pass
    return reports


def test_loss_falls_at_a_sensible_lr_and_not_at_1e_10(model_dir, sweep_data):
    settings = settings_for(model_dir, num_epochs=2)
    losses = model_pair_losses(settings.model_dir, settings, sweep_data.eval)
    untrained = sum(losses) / len(losses)
    learns = run({"learning_rate": 1e-3, "r": 16, "alpha": 32}, settings, sweep_data)
    frozen = run({"learning_rate": 1e-10, "r": 16, "alpha": 32}, settings, sweep_data)
    assert learns[-1]["step"] == len(step_plan(settings, sweep_data.train))
    assert len(learns) == planned_reports(settings, sweep_data.train)
    assert learns[-1]["eval_loss"] < 0.85 * untrained
    assert frozen[-1]["eval_loss"] == pytest.approx(untrained, rel=1e-3)
    # every report carries the base model's loss, measured by the trial with its adapter switched off
    assert all(r["base_eval_loss"] == pytest.approx(untrained, rel=1e-5) for r in learns + frozen)
    assert all(r["tokens_per_s"] > 0 and r["train_loss"] > 0 for r in learns)
    # this process's peak memory: at least what torch and the model take, never shrinking
    peaks = [r["peak_rss_mb"] for r in learns]
    assert peaks[0] > 100 and peaks == sorted(peaks)


def test_resume_continues_at_the_saved_step_and_matches_an_uninterrupted_run(model_dir, sweep_data, tmp_path):
    settings = settings_for(model_dir)
    hp = {"learning_rate": 5e-4, "r": 8, "alpha": 16}
    uninterrupted = run(hp, settings, sweep_data)

    saved = tmp_path / "checkpoint"
    first = run(hp, settings, sweep_data, stop_after=2, keep=saved)
    assert json.loads((saved / TRAINER_STATE).read_text())["step"] == first[-1]["step"] == 10
    resumed = run(hp, settings, sweep_data, resume_from=saved)

    assert [r["step"] for r in resumed] == [r["step"] for r in uninterrupted[2:]]
    assert resumed[-1]["eval_loss"] == pytest.approx(uninterrupted[-1]["eval_loss"], rel=1e-4)


def test_a_node_without_the_embedded_model_builds_the_same_one(model_dir, tmp_path):
    from safetensors.torch import load_file

    from trainables.model_loading import ensure_model_here

    elsewhere = tmp_path / "other-node-cache" / model_dir.name  # the same cache path on another machine
    ensure_model_here(str(elsewhere), embedded=True, hub_endpoint=None)
    ours, theirs = load_file(model_dir / "model.safetensors"), load_file(elsewhere / "model.safetensors")
    assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)
