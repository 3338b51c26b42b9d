"""Evaluation by tokens (issue 22, item 5): when a trial evaluates, on which pairs, what it reports, and what the
summary says of it. The schedule and the subset are pure; one trial trains for real on the embedded tiny model."""

import dataclasses
import math

import numpy as np
import pytest

from trainables.data import EvalTask
from trainables.lora_trial import train_lora
from trainables.settings import TrainingSettings, TrialSettings
from trainables.trial_contract import EVAL_LOSS, RANK_LOSS
from trainables.trial_plan import (EVAL_SHARE, auto_eval_tokens, eval_schedule, evaluation_share, evaluation_steps,
                                   planned_reports, rank_pairs, rank_subset, step_plan)


def test_by_tokens_a_trial_evaluates_at_the_step_that_reaches_each_interval_and_at_its_last():
    schedule = evaluation_steps([100, 100, 250, 50, 100, 100, 30], every_tokens=300, full_every=2)
    # cumulative 100 200 450 500 600 700 730: 300 is reached at step 3, 600 at step 5; the last step always
    assert schedule.steps == (3, 5, 7)
    assert schedule.full == {5, 7}  # every 2nd, and the last
    # one step past several intervals evaluates once
    assert evaluation_steps([1000, 10], every_tokens=300).steps == (1, 2)


def test_by_steps_every_evaluation_is_full_as_before():
    schedule = evaluation_steps([5] * 23, every_steps=10)
    assert schedule.steps == (10, 20, 23) and schedule.full == {10, 20, 23}


def test_the_automatic_interval_keeps_evaluation_at_15_percent_of_the_work():
    full, subset = 1_440_000, 360_000  # competition 4: 240 samples of ~6k tokens, a quarter of them
    step_tokens = [48_000] * 400  # 8 pairs of 6k a step
    every = auto_eval_tokens(step_tokens, full, subset)
    schedule = evaluation_steps(step_tokens, every_tokens=every)
    assert 0.12 < evaluation_share(schedule, step_tokens, full, subset) <= EVAL_SHARE
    assert 20 <= every / 48_000 <= 30 and len(schedule.steps) > 10  # an evaluation every 25 steps or so
    # the old cadence on the same trial, the whole set every 10 steps, spent half the work evaluating
    old = evaluation_steps(step_tokens, every_steps=10)
    assert evaluation_share(old, step_tokens, full, subset) == pytest.approx(0.5)
    # a trial shorter than one interval evaluates once, at its end, on the whole set
    assert evaluation_steps([48_000] * 5, every_tokens=auto_eval_tokens([48_000] * 5, full, subset)).steps == (5,)


def test_the_rank_subset_is_seeded_per_task_and_keeps_the_weights():
    tasks = (EvalTask("A", 0.5, 0, 120), EvalTask("B", 0.5, 120, 240))
    pairs, subset_tasks = rank_subset(240, tasks, 0.25, seed=3)
    again, _ = rank_subset(240, tasks, 0.25, seed=3)
    assert (pairs == again).all() and len(pairs) == 60 and len(set(pairs.tolist())) == 60
    assert ((pairs[:30] < 120).all() and (pairs[30:] >= 120).all())  # 30 of each task, in order
    assert subset_tasks == (EvalTask("A", 0.5, 0, 30), EvalTask("B", 0.5, 30, 60))
    assert not (rank_subset(240, tasks, 0.25, seed=4)[0] == pairs).all()  # another sweep's seed, other pairs
    alone, no_tasks = rank_subset(7, (), 0.25, seed=0)
    assert len(alone) == 2 and no_tasks == ()  # ceil(1.75): a tiny set keeps at least a pair per task


def settings_for(model_dir, **training) -> TrialSettings:
    return TrialSettings(model_dir=str(model_dir), training=TrainingSettings(
        num_epochs=2, batch_size=8, accumulation_steps=1, **training))


def test_a_trial_reports_rank_loss_always_and_eval_loss_only_on_the_whole_set(model_dir, sweep_data):
    settings = settings_for(model_dir, eval_tokens=1500, eval_rank_share=0.25)
    schedule = eval_schedule(settings, sweep_data.train, sweep_data.eval)
    assert len(schedule.steps) == planned_reports(settings, sweep_data.train, sweep_data.eval) > 4
    reports = []
    train_lora({"learning_rate": 1e-3, "r": 8, "alpha": 16}, settings, sweep_data,
               lambda metrics, folder: reports.append(metrics))
    assert [r["step"] for r in reports] == list(schedule.steps)
    full = [r for r in reports if r["step"] in schedule.full]
    subset = [r for r in reports if r["step"] not in schedule.full]
    assert all(EVAL_LOSS in r and r["eval_set"] == "full" for r in full) and reports[-1] in full
    assert subset and all(EVAL_LOSS not in r and r["eval_set"] == "subset" for r in subset)
    assert all(math.isfinite(r[RANK_LOSS]) for r in reports)
    # a full evaluation's rank_loss is the subset's mean of its own per-pair losses: rank_loss means one thing
    ranked = rank_pairs(settings, sweep_data.eval)
    assert len(ranked.pairs) == math.ceil(0.25 * len(sweep_data.eval))
    assert all(r[RANK_LOSS] != r[EVAL_LOSS] for r in full)
    # seconds count up across the trial; each report's evaluation is in the total
    totals = [(r["train_s_total"], r["eval_s_total"]) for r in reports]
    assert totals == sorted(totals) and all(t > 0 and e > 0 for t, e in totals)
    assert reports[-1]["eval_s_total"] == pytest.approx(sum(r["eval_s"] for r in reports))


def test_a_subset_rank_loss_equals_the_same_pairs_scored_in_a_full_evaluation(model_dir, sweep_data):
    """Scoring the subset alone or picking it out of the whole set's per-pair losses: the same number."""
    from trainables.evaluation import pair_losses
    from trainables.lora_trial import load_lora_model
    from trainables.trial_plan import subset_of
    from trainables.model_loading import pick_device
    from trainables.scoring import competition_score

    settings = settings_for(model_dir)
    device = pick_device("cpu")
    model = load_lora_model(settings, 8, 16, device)
    ranked = rank_pairs(settings, sweep_data.eval)
    whole = pair_losses(model, sweep_data.eval, device, batch_size=8)
    alone = pair_losses(model, subset_of(sweep_data.eval, ranked.pairs), device, batch_size=8)
    assert np.allclose([whole[int(i)] for i in ranked.pairs], alone, rtol=1e-4)
    assert competition_score(alone, ranked.tasks)[0] == pytest.approx(np.mean(alone), rel=1e-6)


def test_settings_refuse_a_share_out_of_range_and_eval_tokens_wins_over_eval_steps(model_dir, sweep_data):
    both = settings_for(model_dir, eval_steps=10, eval_tokens=3000)
    assert eval_schedule(both, sweep_data.train, sweep_data.eval).every_tokens == 3000
    with pytest.raises(ValueError, match="--eval_rank_share"):
        TrainingSettings(eval_rank_share=0.0).check()
    with pytest.raises(ValueError, match="--eval_tokens must be at least 1"):
        TrainingSettings(eval_tokens=0).check()
    TrainingSettings().check()


def test_by_steps_or_with_a_share_of_1_rank_loss_is_the_whole_sets(sweep_data, model_dir):
    for training in ({"eval_steps": 5}, {"eval_rank_share": 1.0}):
        settings = settings_for(model_dir, **training)
        schedule = eval_schedule(settings, sweep_data.train, sweep_data.eval)
        assert schedule.full == set(schedule.steps)
        assert len(rank_pairs(settings, sweep_data.eval).pairs) == len(sweep_data.eval)
    by_steps = settings_for(model_dir, eval_steps=5)
    assert planned_reports(by_steps, sweep_data.train) == math.ceil(len(step_plan(by_steps, sweep_data.train)) / 5)


def test_the_summary_says_what_share_of_the_trials_time_went_to_evaluation():
    from orchestrator.summary import evaluation_lines
    from orchestrator.trial_records import TrialRecord, TrialStatus

    trials = [TrialRecord("a", None, TrialStatus.FINISHED, "", 4, 1.0, 1.0, 10.0, "/x", train_s=80.0, eval_s=12.0),
              TrialRecord("b", None, TrialStatus.STOPPED, "", 1, math.nan, math.nan, 3.0, "/y", train_s=6.0, eval_s=2.0)]
    assert evaluation_lines(trials) == ["evaluation:      14.0% of the trials' time (14 s evaluating, 86 s training; "
                                        "each trial's in trials.csv)"]
    assert evaluation_lines([dataclasses.replace(trials[0], train_s=math.nan, eval_s=math.nan)]) == []


def test_the_progress_block_shows_a_subset_evaluation_as_rank_loss_and_a_full_one_as_eval_loss():
    from orchestrator.progress import TrialView, trial_line

    subset = TrialView("ab", "RUNNING", None, latest={"step": 30, "rank_loss": 3.25, "train_loss": 3.5})
    full = TrialView("ab", "RUNNING", None, latest={"step": 40, "rank_loss": 3.2, "eval_loss": 3.1, "train_loss": 3.4})
    assert trial_line(subset) == "ab RUNNING step 30 rank_loss 3.2500 train_loss 3.5000"
    assert trial_line(full) == "ab RUNNING step 40 eval_loss 3.1000 train_loss 3.4000"


@pytest.mark.slow
def test_a_sweep_ranks_on_rank_loss_and_offers_only_whole_set_evaluations_to_the_coordinator(local_ray, model_dir,
                                                                                            sweep_data, tmp_path):
    """Real Ray, ASHA and Optuna: every report carries rank_loss (Tune's strict metric check would fail the sweep
    otherwise); the merged best is a whole-set evaluation; trials.csv and the summary count evaluation seconds."""
    import csv
    import json

    from orchestrator.config import load_config
    from orchestrator.inputs import trial_settings
    from orchestrator.search_space import parse_search_space
    from orchestrator.summary import render_summary
    from orchestrator.sweep import run_sweep
    from publishing.publisher import PublishTarget
    from publishing.setup import PublishSetup

    config = load_config(["--num_epochs", "2", "--eval_tokens", "2500", "--scheduler", "asha", "--grace_period", "1",
                          "--max_concurrent_trials", "1", "--storage_path", str(tmp_path),
                          "--experiment_name", "by_tokens", "--no-dashboard"])
    space = parse_search_space({"sampler": "grid", "space": {"learning_rate": [1e-3, 1e-6], "r": [8],
                                                             "alpha": [16]}}, "test")
    settings = trial_settings(config, model_dir)
    schedule = eval_schedule(settings, sweep_data.train, sweep_data.eval)
    assert len(schedule.full) < len(schedule.steps)  # the case under test: some evaluations score the subset only
    outcome = run_sweep(config, space, settings, sweep_data, PublishSetup(PublishTarget()))

    assert outcome.errored == 0, [t.reason for t in outcome.trials]
    reports = {}
    for result in (tmp_path / "by_tokens").glob("trial_*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        reports[lines[-1]["trial_id"]] = lines
    assert all(RANK_LOSS in r for lines in reports.values() for r in lines)
    full_steps = {(tid, r["step"]): r[EVAL_LOSS] for tid, lines in reports.items() for r in lines if EVAL_LOSS in r}
    assert all(r["eval_set"] == ("full" if r["step"] in schedule.full else "subset")
               for lines in reports.values() for r in lines)
    best = outcome.publish.best
    assert (best.trial_id, best.step) in full_steps and best.eval_loss == pytest.approx(full_steps[best.trial_id,
                                                                                                    best.step])
    assert best.eval_loss == min(full_steps.values())
    rows = list(csv.DictReader((tmp_path / "by_tokens" / "trials.csv").open()))
    assert all(float(row["train_s"]) > 0 and float(row["eval_s"]) > 0 for row in rows)
    assert any(line.startswith("evaluation:      ") for line in render_summary(outcome, config).splitlines())
