"""Issue 14, items 1 and 2: the Optuna study is told how each trial really ended, and --study keeps it in durable
storage that later sweeps on the same inputs continue."""

import json
import math

import optuna
import pytest
from optuna.trial import TrialState

import orchestrator.ray_start
from orchestrator.config import ConfigError
from orchestrator.optuna_searcher import ended_state
from orchestrator.run import main
from orchestrator.search_space import load_search_space, parse_search_space
from orchestrator.optuna_searcher import RAY_TRIAL_ID
from orchestrator.study import choose_study, fingerprint, model_label, redacted
from tests.conftest import own_stderr, write_jsonl
from tests.tune_results import trial_results
from trainables.data import SweepData


def test_a_trial_is_complete_only_when_it_made_every_planned_report():
    assert ended_state({"eval_loss": 1.0, "training_iteration": 4}, False, 4) == TrialState.COMPLETE
    assert ended_state({"eval_loss": 1.0, "training_iteration": 2}, False, 4) == TrialState.PRUNED
    assert ended_state({"eval_loss": 1.0, "training_iteration": 4}, True, 4) == TrialState.FAIL  # errored late
    assert ended_state({"eval_loss": math.inf, "training_iteration": 1, "out_of_memory": "at step 3"}, False, 4) \
        == TrialState.FAIL
    assert ended_state(None, False, 4) == TrialState.FAIL
    assert ended_state({"eval_loss": 1.0, "training_iteration": 1}, False, None) == TrialState.COMPLETE


@pytest.fixture(scope="module")
def swept(local_ray, tmp_path_factory):
    """One ASHA sweep on the embedded model with --study, shared by the tests below."""
    storage = tmp_path_factory.mktemp("studies")
    # --eval_steps: every evaluation on the whole set, so rank_loss (what the study holds) equals eval_loss here
    argv = ["--num_samples", "6", "--num_epochs", "2", "--grace_period", "1", "--reduction_factor", "3",
            "--eval_steps", "10", "--max_concurrent_trials", "2", "--storage_path", str(storage), "--experiment_name", "warm",
            "--no-dashboard", "--study", "studies.journal", "--pruned_trials", "pruned", "--reuse_workers"]
    return storage, argv


@pytest.mark.slow
def test_trial_states_and_intermediate_losses_reach_the_study_truthfully(swept, model_dir, capsys):
    storage, argv = swept
    assert main(argv) == 0
    out = capsys.readouterr().out
    journal = storage / "studies.journal"
    (summary,) = optuna.get_all_study_summaries(storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    assert f'study:           "{summary.study_name}" in {journal}: 0 earlier trials, 6 from this sweep' in out
    # a name a person reads: the model's folder, the competition, 8 hex digits of the fingerprint
    model, competition, digest = summary.study_name.split(" · ")
    assert (model, competition) == (model_dir.name, "m1") and len(digest) == 8 and int(digest, 16) >= 0
    study = optuna.load_study(study_name=summary.study_name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    # optuna-dashboard and trials_dataframe() name the objective: the loss trials are ranked by
    assert study.metric_names == ["rank_loss"]
    assert study.user_attrs["model"] == model_dir.name
    results = trial_results(storage / "warm")
    reports = {json.dumps(t["params"], sort_keys=True): t["reports"] for t in results}
    full = max(len(r) for r in reports.values())
    states = []
    for trial in study.trials:
        ran = reports[json.dumps(trial.params, sort_keys=True)]
        # each Optuna trial names the Ray Tune trial it was: the id in trials.csv, the summary and Ray's dashboard
        assert trial.user_attrs[RAY_TRIAL_ID] == ran[-1]["trial_id"]
        # every evaluation at its optimizer step, with its loss
        assert trial.intermediate_values == {r["step"]: pytest.approx(r["rank_loss"]) for r in ran}
        assert all(r["rank_loss"] == r["eval_loss"] for r in ran)  # every evaluation scored the whole set
        expected = TrialState.COMPLETE if len(ran) == full else TrialState.PRUNED
        assert trial.state == expected and trial.value == pytest.approx(ran[-1]["rank_loss"])
        states.append(trial.state)
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states  # ASHA stopped some, not all
    assert sorted(t.user_attrs[RAY_TRIAL_ID] for t in study.trials) == sorted(r["reports"][-1]["trial_id"]
                                                                             for r in results)


@pytest.mark.slow  # reads the sweep that the slow test above runs
def test_trials_csv_of_that_sweep_ranks_flags_and_explains(swept):
    """The sweep above (it ran first): trials.csv best first, the best flagged, every stopped trial's reason."""
    import csv

    storage, _ = swept
    rows = list(csv.DictReader((storage / "warm" / "trials.csv").open()))
    losses = [float(row["best_eval_loss"]) for row in rows]
    assert len(rows) == 6 and losses == sorted(losses)
    assert [row["best"] for row in rows] == ["yes"] + [""] * 5
    reports = {r["reports"][-1]["trial_id"]: r["reports"] for r in trial_results(storage / "warm")}
    full = max(len(r) for r in reports.values())
    stopped = [row for row in rows if row["status"] == "stopped by the scheduler"]
    assert stopped  # ASHA stopped some
    for row in stopped:
        ran = reports[row["trial_id"]]
        assert row["reason"] == (f"stopped early by ASHA at step {ran[-1]['step']}, after {len(ran)} of {full} "
                                 f"evaluations (rank_loss {ran[-1]['rank_loss']:.4f} above the rung's cutoff)")
    assert all(row["reason"] == "" for row in rows if row["status"] == "finished")


@pytest.mark.slow  # reads the sweep that the slow test above runs
def test_the_same_inputs_continue_the_study_and_other_data_gets_a_new_one(swept, model_dir, tmp_path):
    storage, argv = swept
    space = load_search_space("default")
    again = choose_study("studies.journal", str(storage), model_dir, _embedded_data(), space, "m1")
    assert again.earlier_trials == 6  # the sweep above: the next sweep's TPE starts from these
    pairs = write_jsonl(tmp_path / "other.jsonl", [json.dumps({"question": f"q{i}?", "response": f"a{i}."})
                                                   for i in range(12)])
    other = choose_study("studies.journal", str(storage), model_dir, _embedded_data("--dataset_path", str(pairs)),
                         space, "m1")
    assert other.name != again.name and other.earlier_trials == 0
    competition = choose_study("studies.journal", str(storage), model_dir, _embedded_data(), space, "g1")
    assert competition.name not in (again.name, other.name)


def _embedded_data(*flags: str) -> SweepData:
    from orchestrator.config import load_config
    from orchestrator.inputs import prepare_data
    from trainables.embedded_model import ensure_embedded_model

    return prepare_data(load_config(list(flags)), ensure_embedded_model())


def test_a_file_holding_this_model_and_data_on_another_space_fails_in_one_line(tmp_path, model_dir, sweep_data):
    space = load_search_space("default")
    choose_study("s.journal", str(tmp_path), model_dir, sweep_data, space, "m1")
    narrower = parse_search_space({"sampler": "tpe", "space": {"learning_rate": {"loguniform": [1e-5, 1e-4]},
                                                               "r": [8], "alpha": [16]}}, "narrow.yaml")
    with pytest.raises(ConfigError, match=f"holds study {model_dir.name} · m1 · [0-9a-f]{{8}} of this model and data "
                                          "on another search space"):
        choose_study("s.journal", str(tmp_path), model_dir, sweep_data, narrower, "m1")


@pytest.mark.parametrize("content", ["not a journal\n", '{"op_code": 0, "worker_id": "x"'])
def test_a_damaged_journal_fails_in_one_line_before_ray_starts(content, tmp_path, monkeypatch, capsys):
    def ray_must_not_start(_config):
        raise AssertionError("Ray started for bad input")

    monkeypatch.setattr(orchestrator.ray_start, "start_ray", ray_must_not_start)
    (tmp_path / "bad.journal").write_text(content)
    assert main(["--storage_path", str(tmp_path), "--study", "bad.journal"]) == 2
    err = own_stderr(capsys)
    assert err.startswith(f"error: --study {tmp_path / 'bad.journal'} is not an Optuna journal file") and \
        err.count("\n") == 1


def test_a_database_password_never_appears_in_messages():
    assert redacted("postgresql://miner:s3cret@db.example:5432/optuna") == "postgresql://miner:***@db.example:5432/optuna"
    assert redacted("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_a_study_named_the_old_way_is_continued_under_its_name(tmp_path, model_dir, sweep_data):
    """Before names were readable, a study was `lora-sweep-` and 12 hex digits, with its fingerprint as a user
    attribute; a journal holding one keeps growing that study rather than starting a second."""
    import hashlib

    space = load_search_space("default")
    parts = fingerprint(model_dir, sweep_data, space, "m1")
    old_name = "lora-sweep-" + hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "s.journal")))
    old = optuna.create_study(study_name=old_name, storage=storage, direction="minimize")
    old.set_user_attr("fingerprint", parts)
    old.add_trial(optuna.trial.create_trial(params={"learning_rate": 1e-4, "r": 8, "alpha": 16},
                                            distributions=space.distributions, value=5.0))

    again = choose_study("s.journal", str(tmp_path), model_dir, sweep_data, space, "m1")
    assert (again.name, again.earlier_trials) == (old_name, 1)
    assert len(storage.get_all_studies()) == 1  # no second study of the same inputs
    # the same model's bytes in another folder are the same inputs: the same study
    moved = tmp_path / "moved-model"
    import shutil

    shutil.copytree(model_dir, moved)
    assert choose_study("s.journal", str(tmp_path), moved, sweep_data, space, "m1").name == old_name
    # another competition: a study of its own, named the readable way
    other = choose_study("s.journal", str(tmp_path), model_dir, sweep_data, space, "g1")
    assert other.name.startswith(f"{model_dir.name} · g1 · ") and other.earlier_trials == 0


def test_the_model_in_a_study_name_is_what_a_person_calls_it(tmp_path):
    assert model_label(tmp_path / "hub" / "models--org--My-Model.v2" / "snapshots" / ("a" * 40)) == "org/My-Model.v2"
    assert model_label(tmp_path / "tiny-llama-f02ee987b292") == "tiny-llama-f02ee987b292"
    assert model_label(tmp_path / "my model (copy)") == "my-model-copy"  # only what every storage and shell takes
    assert len(model_label(tmp_path / ("x" * 300))) == 64


def test_a_study_ranked_on_a_subset_never_mixes_with_one_of_whole_set_losses(model_dir, sweep_data):
    from orchestrator.config import load_config
    from orchestrator.study import fingerprint, ranking

    whole = load_config(["--eval_steps", "10"]).training
    subset = load_config([]).training  # --eval_tokens' cadence, rank_loss on 25% of each task's samples
    assert ranking(whole) is None and ranking(load_config(["--eval_rank_share", "1"]).training) is None
    assert ranking(subset) == "rank_loss on 0.25 of each task's held-out samples"
    space = load_search_space("default")
    before = fingerprint(model_dir, sweep_data, space, "m1")
    assert fingerprint(model_dir, sweep_data, space, "m1", ranking(whole)) == before  # earlier studies continue
    assert fingerprint(model_dir, sweep_data, space, "m1", ranking(subset)) != before
