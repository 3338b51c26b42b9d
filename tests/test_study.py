"""Issue 14, items 1 and 2: the Optuna study is told how each trial really ended, and --study keeps it in durable
storage that later sweeps on the same inputs continue."""

import json
import math

import optuna
import pytest
from optuna.trial import TrialState

import orchestrator.sweep
from orchestrator.config import ConfigError
from orchestrator.optuna_searcher import ended_state
from orchestrator.run import main
from orchestrator.search_space import load_search_space, parse_search_space
from orchestrator.study import choose_study, redacted
from tests.conftest import own_stderr, write_jsonl
from tests.test_sweep import trial_results
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
    argv = ["--num_samples", "6", "--num_epochs", "2", "--grace_period", "1", "--reduction_factor", "3",
            "--max_concurrent_trials", "2", "--storage_path", str(storage), "--experiment_name", "warm",
            "--no-dashboard", "--study", "studies.journal", "--pruned_trials", "pruned"]
    return storage, argv


def test_trial_states_and_intermediate_losses_reach_the_study_truthfully(swept, model_dir, capsys):
    storage, argv = swept
    assert main(argv) == 0
    out = capsys.readouterr().out
    journal = storage / "studies.journal"
    (summary,) = optuna.get_all_study_summaries(storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    assert f"study:           {summary.study_name} in {journal}: 0 earlier trials, 6 from this sweep" in out
    study = optuna.load_study(study_name=summary.study_name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    reports = {json.dumps(t["params"], sort_keys=True): t["reports"] for t in trial_results(storage / "warm")}
    full = max(len(r) for r in reports.values())
    states = []
    for trial in study.trials:
        ran = reports[json.dumps(trial.params, sort_keys=True)]
        # every evaluation at its optimizer step, with its loss
        assert trial.intermediate_values == {r["step"]: pytest.approx(r["eval_loss"]) for r in ran}
        expected = TrialState.COMPLETE if len(ran) == full else TrialState.PRUNED
        assert trial.state == expected and trial.value == pytest.approx(ran[-1]["eval_loss"])
        states.append(trial.state)
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states  # ASHA stopped some, not all


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
    with pytest.raises(ConfigError, match="holds study lora-sweep-.* of this model and data on another search space"):
        choose_study("s.journal", str(tmp_path), model_dir, sweep_data, narrower, "m1")


@pytest.mark.parametrize("content", ["not a journal\n", '{"op_code": 0, "worker_id": "x"'])
def test_a_damaged_journal_fails_in_one_line_before_ray_starts(content, tmp_path, monkeypatch, capsys):
    def ray_must_not_start(_config):
        raise AssertionError("Ray started for bad input")

    monkeypatch.setattr(orchestrator.sweep, "start_ray", ray_must_not_start)
    (tmp_path / "bad.journal").write_text(content)
    assert main(["--storage_path", str(tmp_path), "--study", "bad.journal"]) == 2
    err = own_stderr(capsys)
    assert err.startswith(f"error: --study {tmp_path / 'bad.journal'} is not an Optuna journal file") and \
        err.count("\n") == 1


def test_a_database_password_never_appears_in_messages():
    assert redacted("postgresql://miner:s3cret@db.example:5432/optuna") == "postgresql://miner:***@db.example:5432/optuna"
    assert redacted("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
