"""The trial-driver contract (issue 24, item 4): trainables.trial_contract owns every metric name a trial reports,
the typed record a report is, and the closed sets of words both sides use. No other module of the three packages
spells a metric name; the trial's own reports round-trip through the record; the enums take the words the flags,
YAML and competitions.yaml always took, and --help lists the same choices."""

import ast
import dataclasses
import math
from pathlib import Path

import pytest
import torch

import trainables.lora_trial as lora_trial
import trainables.trial_contract as contract
from orchestrator.config import ConfigError, load_config
from orchestrator.progress import LINE_METRICS
from publishing.subnet.competitions import load_competitions
from trainables.lora_trial import TrainingSettings, TrialSettings, train_lora
from trainables.trial_contract import (METRICS, TIME_TOTAL_S, TRAINING_ITERATION, TUNE_KEYS, Checkpointing, EvalSet,
                                       Packing, ScoringMethod, TrialReport)
from trainables.trial_telemetry import LINE_FIELDS, TRIAL_GAUGES

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "publishing", "trainables")
OWNER = "trainables/trial_contract.py"
# Tune's keys that name nothing else in the packages (trial_id, done and timestamp do: a Prometheus tag, a CSV column)
SCANNED = {*METRICS, TRAINING_ITERATION, TIME_TOTAL_S}
# (file, string): a homonym of a metric that names something else, kept because readers depend on the name
NOT_METRICS = {
    ("orchestrator/trial_records.py", "train_s"): "trials.csv's column: the trial's total (the report's train_s_total)",
    ("orchestrator/trial_records.py", "eval_s"): "trials.csv's column: the trial's total (the report's eval_s_total)",
    ("orchestrator/outcome.py", "out_of_memory"): "W&B's summary key: how many trials ran out of memory",
}


def spelled_names(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, string) of each string constant in `source` that is one of `names`, or one followed by "/" (Tune's
    flattened columns, task_losses/<task>); f-strings' constant parts too. Docstrings, and any other string that
    stands alone as a statement, are prose; comments are not in the tree."""
    tree = ast.parse(source)
    prose = {id(node.value) for node in ast.walk(tree)
             if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    wanted = names | {name + "/" for name in names}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose
            and node.value in wanted]


def test_no_module_but_the_contract_spells_a_metric_name():
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            where = path.relative_to(ROOT).as_posix()
            if where == OWNER:
                continue
            found += [f"{where}:{line}: {text!r}" for line, text in spelled_names(path.read_text(encoding="utf-8"),
                                                                                 SCANNED)
                      if (where, text) not in NOT_METRICS]
    assert not found, "use the names of trainables.trial_contract:\n" + "\n".join(found)


def test_the_scan_catches_what_it_is_meant_to():
    source = '''"""eval_loss in a docstring is prose"""
x = {"eval_loss": 1}                      # a key
y = result.get("training_iteration")      # Tune's key
z = f"{name}" + f"task_losses/{task}"     # a flattened column, in an f-string
w = f"rank_loss {value:.4f}"              # prose in a message: not a name
"step"                                    # a lone string: prose
'''
    assert spelled_names(source, SCANNED) == [(2, "eval_loss"), (3, "training_iteration"), (4, "task_losses/")]
    # each allowed homonym is still where it is said to be (a stale entry would hide a new use)
    for where, text in NOT_METRICS:
        assert text in {t for _, t in spelled_names((ROOT / where).read_text(encoding="utf-8"), SCANNED)}, where


def test_every_metric_name_is_a_field_of_the_record_and_the_readers_use_them():
    constants = {value for name, value in vars(contract).items() if name.isupper() and isinstance(value, str)}
    assert constants == set(METRICS) | set(TUNE_KEYS)
    assert not set(METRICS) & set(TUNE_KEYS)
    assert set(TRIAL_GAUGES) <= set(METRICS) and {key for key, _, _ in LINE_FIELDS} <= set(METRICS)
    assert set(LINE_METRICS) <= set(METRICS)


def settings_for(model_dir) -> TrialSettings:
    # by tokens, so the trial makes both kinds of report: subset evaluations and full ones
    return TrialSettings(model_dir=str(model_dir), memory_estimate_gb=1.5, training=TrainingSettings(
        num_epochs=1, batch_size=8, accumulation_steps=1, eval_tokens=1500, eval_rank_share=0.25))


def round_trips(metrics: dict) -> TrialReport:
    report = TrialReport.from_metrics(metrics)
    assert report.to_metrics() == metrics and list(report.to_metrics()) == list(metrics)
    return report


def test_the_trials_own_reports_round_trip_through_the_record(model_dir, sweep_data, monkeypatch):
    reports = []
    train_lora({"learning_rate": 1e-3, "r": 8, "alpha": 16}, settings_for(model_dir), sweep_data,
               lambda metrics, folder: reports.append(metrics))
    assert {r[contract.EVAL_SET] for r in reports} == {"full", "subset"}
    typed = [round_trips(metrics) for metrics in reports]
    assert all(type(r[contract.EVAL_SET]) is str for r in reports)  # plain values on the wire
    assert {r.eval_set for r in typed} == {EvalSet.FULL, EvalSet.SUBSET}
    assert all(r.full == (r.eval_set is EvalSet.FULL) and not r.ran_out_of_memory for r in typed)
    last = typed[-1]
    assert last.step > 0 and math.isfinite(last.rank_loss) and last.base_eval_loss is not None
    assert last.train_s_total > 0 and last.load_s is not None and last.memory_estimate_gb == 1.5
    # as Tune returns it: its own keys beside the trial's, which the record leaves out
    tuned = {**reports[-1], contract.TRIAL_STARTED_AT: 1.0, contract.REPORTED_AT: 2.0,
             TRAINING_ITERATION: len(reports), TIME_TOTAL_S: 3.0, contract.TRIAL_ID: "abc", contract.DONE: True}
    assert TrialReport.from_metrics(tuned).to_metrics() == {key: value for key, value in tuned.items()
                                                           if key not in TUNE_KEYS}

    def runs_out(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated by the test)")

    monkeypatch.setattr(lora_trial, "_train", runs_out)
    ended = []
    train_lora({"learning_rate": 1e-3, "r": 8, "alpha": 16}, settings_for(model_dir), sweep_data,
               lambda metrics, folder: ended.append(metrics))
    [oom] = [round_trips(metrics) for metrics in ended]
    assert oom.ran_out_of_memory and oom.out_of_memory.startswith("out of memory at step 1")
    assert oom.eval_loss == oom.rank_loss == math.inf and not oom.full and oom.eval_set is None and oom.step == 0


def test_a_result_is_read_back_with_its_flattened_task_losses_and_needs_a_step_and_rank_loss():
    flat = {contract.STEP: 4.0, contract.RANK_LOSS: 1.5, f"{contract.TASK_LOSSES}/a": 2.0,
            f"{contract.TASK_LOSSES}/b": 3.0}
    report = TrialReport.from_metrics(flat)
    assert report.step == 4 and report.task_losses == {"a": 2.0, "b": 3.0}
    with pytest.raises(ValueError, match="lacks step, rank_loss"):
        TrialReport.from_metrics({TRAINING_ITERATION: 1})
    with pytest.raises(TypeError):  # a name the contract does not know is not a report's
        TrialReport(step=1, rank_loss=1.0, eval_los=2.0)
    with pytest.raises(ValueError):
        TrialReport(step=1, rank_loss=1.0, eval_set="most")


def test_the_enums_are_their_strings():
    assert Packing.ON == "on" and f"{Checkpointing.AUTO}" == "auto" and {"off": 1}[Packing.OFF] == 1
    assert [str(m) for m in ScoringMethod] == ["response_loss", "reference_loss"]
    assert [m.value for m in EvalSet] == ["full", "subset"]


def test_flags_and_yaml_take_the_same_words_and_the_settings_hold_the_members(tmp_path):
    config = load_config(["--packing", "off", "--gradient_checkpointing", "on"])
    assert config.training.packing is Packing.OFF and config.training.gradient_checkpointing is Checkpointing.ON
    path = tmp_path / "c.yaml"
    path.write_text("packing: off\ngradient_checkpointing: off\n")  # YAML 1.1 reads both as false
    config = load_config(["--config", str(path)])
    assert config.training.packing is Packing.OFF and config.training.gradient_checkpointing is Checkpointing.OFF
    defaults = load_config([]).training
    assert defaults.packing is Packing.ON and defaults.gradient_checkpointing is Checkpointing.AUTO
    # set in code (the benchmarks do), and through dataclasses.replace
    assert TrainingSettings(packing="off").packing is Packing.OFF
    assert dataclasses.replace(defaults, gradient_checkpointing="off").gradient_checkpointing is Checkpointing.OFF
    with pytest.raises(ConfigError, match="--packing must be one of on, off, got 'sometimes'"):
        load_config(["--packing", "sometimes"])


def test_help_lists_the_same_choices(capsys):
    with pytest.raises(SystemExit):
        load_config(["--help"])
    text = capsys.readouterr().out
    assert "--packing {on,off}" in text and "--gradient_checkpointing {auto,on,off}" in text
    flat = " ".join(text.split())
    assert "--batch_size pairs (default: on)" in flat and "off: none (default: auto)" in flat
    assert "Packing." not in text and "Checkpointing." not in text


def test_competitions_score_by_a_scoring_method():
    competitions = load_competitions()
    methods = {task.method for competition in competitions.values() for task in competition.tasks}
    assert methods == set(ScoringMethod) and all(isinstance(m, ScoringMethod) for m in methods)
    assert competitions["m1"].tasks[0].method is ScoringMethod.RESPONSE_LOSS
    assert competitions["4"].scored_by_reference
