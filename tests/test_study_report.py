"""orchestrator.study_report: importances from the trials' own results, compute spent, what early stopping saved."""

import dataclasses
import math
import random
from types import SimpleNamespace

import pandas as pd
import pytest

from orchestrator.config import load_config
from orchestrator.search_space import parse_search_space
from orchestrator.study_report import (IMPORTANCES_PNG, PARALLEL_COORDINATES_PNG, compute_spent,
                                       early_stopping_savings, param_importances, study_from_records, study_report,
                                       write_study_plots)
from orchestrator.study import StudyChoice
from orchestrator.outcome import SweepOutcome, summary_record
from orchestrator.trial_records import TrialRecord, TrialStatus, records_from_results
from publishing.coordinator import CoordinatorReport
from trainables.hyperparameters import NAMES, Hyperparameters

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEFAULT_SPACE = parse_search_space({"sampler": "tpe", "space": {
    "learning_rate": {"loguniform": [1.0e-6, 1.0e-3]}, "r": [8, 16, 32, 64, 128], "alpha": [8, 16, 32, 64]}}, "test")


def record(trial_id, hyperparameters, loss, status=TrialStatus.FINISHED, steps=40, seconds=10.0):
    return TrialRecord(trial_id, hyperparameters, status, "", steps, loss, loss, seconds, f"/x/{trial_id}")


def random_trials(loss_of, count=16, seed=0):
    """`count` trials at random points of the default space whose best eval loss is loss_of(hyperparameters)."""
    rng = random.Random(seed)
    trials = []
    for i in range(count):
        chosen = Hyperparameters(10 ** rng.uniform(-6, -3), rng.choice([8, 16, 32, 64, 128]),
                                 rng.choice([8, 16, 32, 64]))
        trials.append(record(f"t{i}", chosen, loss_of(chosen),
                             status=TrialStatus.STOPPED if i % 2 else TrialStatus.FINISHED))
    return trials


@pytest.mark.parametrize("name, loss_of", [
    ("learning_rate", lambda h: 5 + (math.log10(h.learning_rate) + 4) ** 2),
    ("r", lambda h: 5 + math.log2(h.r)),
    ("alpha", lambda h: 9 - math.log2(h.alpha)),
])
def test_the_importances_agree_with_the_trial_results(name, loss_of):
    trials = random_trials(loss_of)
    # trials whose loss is no result are left out: were they counted, r would look like all that matters
    failed = [record("f1", Hyperparameters(1e-4, 128, 8), 100.0, status=TrialStatus.FAILED),
              record("f2", Hyperparameters(1e-4, 8, 8), math.nan, status=TrialStatus.OUT_OF_MEMORY),
              record("f3", Hyperparameters(1e-5, 128, 64), 99.0, status=TrialStatus.INTERRUPTED)]
    importances = param_importances(trials + failed, DEFAULT_SPACE.distributions, seed=0)
    assert importances.trials == len(trials)
    assert set(importances.values) == set(NAMES)
    assert all(share >= 0 for share in importances.values.values())
    assert sum(importances.values.values()) == pytest.approx(1.0)
    # the hyperparameter the loss depends on has the largest share, by far
    assert max(importances.values, key=importances.values.get) == name
    assert importances.values[name] > 0.5
    # the summary line prints them largest first, with the number of trials
    assert importances.line() == ("importances:     " + ", ".join(
        f"{n} {s:.2f}" for n, s in sorted(importances.values.items(), key=lambda kv: -kv[1]))
        + f" (fANOVA over {len(trials)} trials of this sweep, each by its best loss)")


def test_importances_score_each_trial_by_its_best_loss_and_say_how_the_dashboard_differs():
    # the best loss of each trial follows the learning rate; its last loss (the value Optuna stores for a complete
    # trial, which optuna-dashboard reads) follows r: the summary answers for the best loss, and says so
    rng = random.Random(1)
    trials = []
    for i in range(16):
        chosen = Hyperparameters(10 ** rng.uniform(-6, -3), rng.choice([8, 16, 32, 64, 128]), 16)
        best = 3 + (math.log10(chosen.learning_rate) + 4) ** 2
        trials.append(TrialRecord(f"t{i}", chosen, TrialStatus.FINISHED, "", 40, best, best + math.log2(chosen.r) * 10,
                                  10.0, f"/x/t{i}"))
    importances = param_importances(trials, DEFAULT_SPACE.distributions, seed=0)
    assert max(importances.values, key=importances.values.get) == "learning_rate"
    assert importances.lines() == [importances.line()]
    assert importances.lines(stored_study=True) == [
        importances.line(),
        "                 (optuna-dashboard's can differ: PED-ANOVA over the study's complete trials, earlier "
        "sweeps' too, each by its last value)"]
    # no importances, no note
    none = param_importances(trials[:2], DEFAULT_SPACE.distributions)
    assert none.lines(stored_study=True) == [none.line()]


def test_the_study_holds_each_scored_trial_with_its_best_loss():
    trials = random_trials(lambda h: h.r / 10, count=5)
    trials.append(record("oom", Hyperparameters(1e-4, 8, 8), math.nan, status=TrialStatus.OUT_OF_MEMORY))
    trials.append(record("outside", Hyperparameters(1e-2, 8, 8), 1.0))  # outside the space's range: left out
    study = study_from_records(trials, DEFAULT_SPACE.distributions)
    held = {t.user_attrs["trial_id"]: t for t in study.trials}
    assert sorted(held) == sorted(f"t{i}" for i in range(5))
    for trial in trials[:5]:
        assert held[trial.trial_id].value == trial.best_eval_loss
        assert held[trial.trial_id].params == trial.hyperparameters.as_dict()


def test_constant_parameters_do_not_crash_it():
    # a grid whose r has one value, and whose alpha has two values of which the trials used one
    grid = parse_search_space({"sampler": "grid", "space": {"learning_rate": [1e-6, 1e-5, 1e-4, 1e-3, 1e-2],
                                                            "r": [8], "alpha": [16, 32]}}, "test")
    trials = [record(f"g{i}", Hyperparameters(lr, 8, 16), 5 + i) for i, lr in enumerate([1e-6, 1e-5, 1e-4, 1e-3])]
    importances = param_importances(trials, grid.distributions)
    assert importances.values["learning_rate"] == pytest.approx(1.0)
    assert importances.values["r"] == 0.0 and importances.values["alpha"] == pytest.approx(0.0)
    # nothing varied, or the loss did not: said in one line rather than an even split of nothing
    same = [record(f"s{i}", Hyperparameters(1e-4, 8, 16), 5 + i) for i in range(4)]
    assert param_importances(same, grid.distributions).line() == (
        "importances:     none: every trial had the same hyperparameters")
    flat = [record(f"c{i}", Hyperparameters(lr, 8, 16), 5.0) for i, lr in enumerate([1e-6, 1e-5, 1e-4, 1e-3])]
    assert param_importances(flat, grid.distributions).line() == (
        "importances:     none: every trial had the same best eval loss")


def test_too_few_trials_say_so_in_one_line(tmp_path):
    trials = random_trials(lambda h: h.learning_rate, count=3)
    trials.append(record("bad", Hyperparameters(1e-4, 8, 8), math.nan, status=TrialStatus.FAILED))
    importances = param_importances(trials, DEFAULT_SPACE.distributions)
    assert importances.values == {}
    assert importances.line() == ("importances:     need at least 4 trials with a loss for fANOVA "
                                  "(this sweep has 3)")
    # no bars are drawn for importances that were not computed; every trial is still drawn
    assert write_study_plots(importances, trials, tmp_path) == [tmp_path / PARALLEL_COORDINATES_PNG]
    assert param_importances(trials[:3] + random_trials(lambda h: 1 / h.r, count=1, seed=3),
                             DEFAULT_SPACE.distributions).values  # four are enough


def test_compute_is_seconds_times_what_each_trial_held():
    trials = [record("a", None, 5.0, seconds=1000.0), record("b", None, math.nan, TrialStatus.FAILED, seconds=500.0),
              record("c", None, 5.0, TrialStatus.STOPPED, seconds=300.0)]
    on_gpus = compute_spent(trials, {"cpu": 4, "gpu": 1})
    assert (on_gpus.unit, on_gpus.seconds, on_gpus.hours) == ("GPU", 1800.0, 0.5)
    assert on_gpus.line() == "compute:         0.50 GPU-hours over 3 trials"
    on_cpus = compute_spent(trials, {"cpu": 2})
    assert (on_cpus.unit, on_cpus.seconds) == ("CPU", 3600.0)
    assert on_cpus.line() == "compute:         1.00 CPU-hours over 3 trials"
    assert compute_spent(trials[:1], {"cpu": 1}).line() == "compute:         0.28 CPU-hours over 1 trials"
    assert compute_spent(trials[2:], {"cpu": 1}).line() == "compute:         0.083 CPU-hours over 1 trials"


def fake_result(trial_id, steps, seconds_per_step, done=True, error=None, planned_steps=40):
    """A Tune Result as records_from_results reads it: reports every 10 steps (the last at the final step)."""
    history = pd.DataFrame([{"step": step, "eval_loss": 6.0 - step / 100, "training_iteration": i + 1,
                             "time_total_s": step * seconds_per_step, "trial_id": trial_id, "base_eval_loss": 6.5}
                            for i, step in enumerate(steps)])
    metrics = {**history.iloc[-1].to_dict(), "done": done} if steps else {}
    return SimpleNamespace(metrics=metrics, metrics_dataframe=history if steps else None, error=error,
                           config={"learning_rate": 1e-4, "r": 8, "alpha": 16}, path=f"/x/{trial_id}")


def test_the_early_stopping_savings_agree_with_the_steps_counted_from_the_reports():
    # each trial's reported steps (a full trial runs 45 steps: reports at 10, 20, 30, 40 and 45)
    reports = {"full1": [10, 20, 30, 40, 45], "asha1": [10, 20], "asha2": [10], "full2": [10, 20, 30, 40, 45],
               "asha3": [10, 20, 30], "failed": [10, 20]}
    per_step = {"full1": 1.0, "asha1": 1.5, "asha2": 3.0, "full2": 1.2, "asha3": 0.5, "failed": 2.0}
    results = [fake_result(t, steps, per_step[t], error="RuntimeError: boom" if t == "failed" else None)
               for t, steps in reports.items()]
    records = records_from_results(results, planned_reports=5)
    assert [r.status for r in records] == [TrialStatus.FINISHED, TrialStatus.STOPPED, TrialStatus.STOPPED,
                                           TrialStatus.FINISHED, TrialStatus.STOPPED, TrialStatus.FAILED]
    # each record says why it did not run to the end, from its own last report
    assert [r.reason for r in records] == [
        "", "stopped early by ASHA at step 20, after 2 of 5 evaluations (its rank_loss above the rung's cutoff)",
        "stopped early by ASHA at step 10, after 1 of 5 evaluations (its rank_loss above the rung's cutoff)", "",
        "stopped early by ASHA at step 30, after 3 of 5 evaluations (its rank_loss above the rung's cutoff)",
        "RuntimeError: boom"]
    assert {r.base_eval_loss for r in records} == {6.5}  # the untrained loss each trial's reports carry
    savings = early_stopping_savings(records, 45, {"cpu": 2})

    # recounted from the step lists alone: the stopped trials' steps short of a full trial's
    stopped = ("asha1", "asha2", "asha3")
    saved = sum(45 - reports[t][-1] for t in stopped)
    assert saved == 25 + 35 + 15
    assert (savings.stopped, savings.steps_saved, savings.planned_steps) == (3, saved, 45 * len(reports))
    assert savings.share == pytest.approx(saved / 270)
    # at the pace of the trials that ran to the end (median of 1.0 and 1.2 s a step), on the 2 CPUs each held: a
    # stopped trial's own pace counts its start-up over a few steps
    cpu_seconds = saved * 1.1 * 2
    assert cpu_seconds == pytest.approx(165.0)
    assert savings.seconds_saved == pytest.approx(cpu_seconds)
    assert savings.line() == (f"early stopping:  saved 75 of 270 steps (27.8%), "
                              f"about {cpu_seconds / 3600:.2g} CPU-hours")
    # nothing stopped, nothing saved
    nothing = early_stopping_savings([r for r in records if r.status is not TrialStatus.STOPPED], 45, {"cpu": 1})
    assert nothing.line() == "early stopping:  saved 0 of 135 steps (0.0%), about 0 CPU-hours"


def test_the_parallel_coordinates_mark_the_untrained_loss_on_the_loss_axis():
    from orchestrator.study_report import parallel_coordinates_figure

    trials = [dataclasses.replace(t, base_eval_loss=9.5)
              for t in random_trials(lambda h: 5 + (math.log10(h.learning_rate) + 4) ** 2, count=6)]
    axes = parallel_coordinates_figure(trials).axes[0]
    [untrained] = [text for text in axes.texts if text.get_text().startswith("untrained")]
    assert untrained.get_text() == "untrained\n9.5000"
    # the loss axis stretches to hold it: it is the top of that axis, above every trial's loss
    assert untrained.get_position()[1] == pytest.approx(1.0)
    assert "9.500" not in [text.get_text() for text in axes.texts]  # not also one of the trials' ticks
    legend = [text.get_text() for text in axes.figure.legends[0].get_texts()]
    assert legend[-1] == "untrained model's loss" and "stopped early" in legend
    # no untrained loss known (records made without one): no mark, no legend entry
    axes = parallel_coordinates_figure(random_trials(lambda h: h.r, count=6)).axes[0]
    assert not [text for text in axes.texts if text.get_text().startswith("untrained")]


def test_the_plots_are_written_as_png_files(tmp_path):
    trials = random_trials(lambda h: 5 + (math.log10(h.learning_rate) + 4) ** 2, count=8)
    trials.append(record("oom", Hyperparameters(1e-4, 128, 64), math.nan, TrialStatus.OUT_OF_MEMORY, steps=0))
    trials.append(record("unknown", None, math.nan, TrialStatus.FAILED))
    importances = param_importances(trials, DEFAULT_SPACE.distributions)
    written = write_study_plots(importances, trials, tmp_path / "plots")
    assert written == [tmp_path / "plots" / IMPORTANCES_PNG, tmp_path / "plots" / PARALLEL_COORDINATES_PNG]
    for path in written:
        assert path.read_bytes().startswith(PNG_SIGNATURE) and path.stat().st_size > 10_000


def test_the_summary_and_the_wandb_record_carry_what_mattered(tmp_path):
    from orchestrator.summary import render_summary

    trials = random_trials(lambda h: 5 + (math.log10(h.learning_rate) + 4) ** 2, count=8)
    trials = [t if t.status is TrialStatus.FINISHED else record(t.trial_id, t.hyperparameters, t.best_eval_loss,
                                                                 TrialStatus.STOPPED, steps=10, seconds=5.0)
              for t in trials]
    report = study_report(trials, {"cpu": 1}, 40, tmp_path / "plots", DEFAULT_SPACE.distributions, seed=0)
    assert report.plots == [str(tmp_path / "plots" / name) for name in (IMPORTANCES_PNG, PARALLEL_COORDINATES_PNG)]
    outcome = SweepOutcome(str(tmp_path), "e", trials, interrupted=False, best_trial=None, base_eval_loss=6.0,
                           wall_s=10.0, plots=report.plots, comparison=None,
                           publish=CoordinatorReport(lines=[], offline=True), what_mattered=report)
    summary = render_summary(outcome, load_config([]))
    assert report.importances.line() in summary and summary.count("importances:") == 1
    assert "optuna-dashboard's can differ" not in summary  # no stored study, no dashboard to differ from
    with_study = dataclasses.replace(outcome, study=StudyChoice("/s.journal", "tiny · m1 · 0123abcd", {}, 0,
                                                                "/s.journal"))
    assert f"{report.importances.line()}\n                 (optuna-dashboard's can differ: " in render_summary(
        with_study, load_config([]))
    # 4 trials ran 40 steps in 10 s, 4 were stopped at step 10 after 5 s: 60 s; 4 x 30 steps saved, each at the
    # finished trials' 0.25 s a step
    assert "compute:         0.017 CPU-hours over 8 trials" in summary
    assert "early stopping:  saved 120 of 320 steps (37.5%), about 0.0083 CPU-hours" in summary
    assert f"plot:            {tmp_path / 'plots' / PARALLEL_COORDINATES_PNG}" in summary
    values = summary_record(outcome)
    assert values["param_importances"] == report.importances.values
    assert values["cpu_hours"] == pytest.approx(60 / 3600)
    assert values["early_stopping_steps_saved"] == 120 and values["early_stopping_planned_steps"] == 320
    assert values["early_stopping_cpu_hours_saved"] == pytest.approx(30 / 3600)
