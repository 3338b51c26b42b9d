"""End to end on a real local Ray (2 CPUs): Optuna suggests, ASHA stops, trials train, the best is merged."""

import csv
import json

import pytest
from transformers import AutoModelForCausalLM

from orchestrator.run import main
from orchestrator.cluster_plan import concurrent_slots, room_for_a_trial, trial_resources, wait_for_room
from orchestrator.config import ConfigError, load_config
from publishing.subnet.model_hash import hash_directory
from publishing.subnet.model_id import ModelId
from tests import faulty_trials
from tests.faulty_trials import crash_once_after_first_checkpoint, fail_at_one_learning_rate, slow_to_clean_up
from tests.tune_results import trial_results


def test_one_trial_per_gpu_where_there_are_gpus():
    assert trial_resources("auto", 2, cluster_gpus=8) == {"cpu": 2, "gpu": 1}
    assert trial_resources("auto", 1, cluster_gpus=0) == {"cpu": 1}
    assert trial_resources("cpu", 1, cluster_gpus=8) == {"cpu": 1}
    assert concurrent_slots({"cpu": 1, "gpu": 1}, {"CPU": 64, "GPU": 8}) == 8
    assert concurrent_slots({"cpu": 1}, {"CPU": 2}) == 2
    assert concurrent_slots({"cpu": 2}, {"CPU": 2}) == 1


def test_a_trial_has_room_where_a_gpu_is_or_for_auto_and_cpu_enough_cpus():
    # the README's cluster before its first GPU worker joins: a head with no CPU for trials
    assert not room_for_a_trial("auto", 1, {"CPU": 0})
    assert room_for_a_trial("auto", 1, {"CPU": 8, "GPU": 1}) and room_for_a_trial("auto", 2, {"CPU": 2})
    assert not room_for_a_trial("auto", 4, {"CPU": 2})
    assert not room_for_a_trial("cuda", 1, {"CPU": 64}) and room_for_a_trial("cuda:1", 1, {"CPU": 8, "GPU": 2})
    assert not room_for_a_trial("cpu", 1, {"CPU": 0, "GPU": 8}) and room_for_a_trial("cpu", 1, {"CPU": 1})


def test_a_driver_on_a_cluster_waits_for_a_worker_then_says_none_came_in_one_line(local_ray):
    """The session's Ray has 2 CPUs and no GPU: a joined driver asking for GPU trials waits, then gives up in one
    line; a Ray started here has nothing to wait for, nor has a cluster with room."""
    said = []
    joined_cuda = load_config(["--address", "auto", "--device", "cuda"])
    with pytest.raises(ConfigError, match=r"^no worker node with a GPU joined the cluster in 0\.01 minutes; check "
                                          r"`ray status`"):
        wait_for_room(joined_cuda, wait_s=0.6, poll_s=0.2, say=said.append)
    assert said == ["waiting for a worker node: the cluster has no room for a trial yet (a GPU; it has 0 GPUs, 2 CPUs). "
                    "A new node takes minutes to join; `ray status` on the head shows the autoscaler's launches"]
    said.clear()
    assert wait_for_room(load_config(["--device", "cuda"]), wait_s=0.6, say=said.append)["CPU"] == 2
    assert wait_for_room(load_config(["--address", "auto"]), wait_s=0.6, say=said.append)["CPU"] == 2 and not said


@pytest.mark.slow
def test_sweep_end_to_end(local_ray, tmp_path, capsys):
    import re

    # a damaged state file left by an earlier run costs a warning, not the sweep
    (tmp_path / "e2e").mkdir()
    (tmp_path / "e2e" / "publish_state.json").write_text("garbage")
    # --eval_steps: every evaluation on the whole held-out set, so each report is a candidate and keeps the
    # checkpoint retention below simple to recount (the rank subset's cadence: tests/test_eval_schedule.py)
    code = main(["--num_samples", "4", "--num_epochs", "2", "--eval_steps", "10", "--storage_path", str(tmp_path),
                 "--experiment_name", "e2e", "--no-dashboard"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0
    # the progress block (orchestrator/progress.py), not Tune's bordered table, its rung cut-offs (negated losses)
    # or its Result logdir in Ray's temporary folder
    assert re.search(r"^trials: \d/4 done.*, \d running, \d pending · best eval_loss \d\.\d{4} \(trial \w+ "
                     r"lr=\d\.\d\de-\d\d r=\d+ alpha=\d+\) · (about \S+ left|all trials ended)$", out, re.M), out
    # a line per trial (the block every 10 s may or may not catch one running: tests/test_dashboard_browser.py does)
    assert re.search(r"^\w+ (RUNNING|FINISHED|STOPPED) lr=\S+ r=\d+ alpha=\d+ step \d+ (eval|rank)_loss \d\.\d{4} "
                     r"train_loss \d\.\d{4} tokens/s \d+$", out, re.M), out
    assert "+----" not in out and "Current best trial" not in out and "/tmp/ray" not in out, out
    assert not re.search(r"(eval_loss|Iter \S+:) -\d", out), out
    summary = out[out.index("=== Sweep summary ==="):]
    assert "best trial:" in summary and "untrained" in summary
    assert f"plot:            {tmp_path / 'e2e' / 'plots' / 'eval_loss_curves.png'}" in summary

    trials = trial_results(tmp_path / "e2e")
    assert len(trials) == 4
    # eval_loss (the whole held-out set) is in the full evaluations' reports only; rank_loss is in every one
    best_loss = min(r["eval_loss"] for t in trials for r in t["reports"] if "eval_loss" in r)
    assert f"{best_loss:.4f} best" in summary

    # each trial's actor is named for it: Ray prefixes the log lines it forwards with the actor's repr (Ray's
    # deduplication forwards only some trials' lines, and each must name the trial that wrote it)
    named = re.findall(r"\(trial (\w+) lr=\S+ r=\d+ alpha=\d+ pid=\d+\)(?:\x1b\[0m)? \[trial (\w+)\]", captured.err)
    assert named and all(actor == line for actor, line in named), captured.err[-3000:]

    # two trials really ran at the same time on the 2 CPUs
    spans = sorted((t["reports"][0]["trial_started_at"], t["reports"][-1]["reported_at"]) for t in trials)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))

    assert "publish_state.json" in summary and "set aside" in summary
    # the best trial by id and folder, every trial in trials.csv, and what to run next
    best_trial = next(t for t in trials if min((r["eval_loss"] for r in t["reports"] if "eval_loss" in r),
                                               default=None) == best_loss)
    trial_id = best_trial["reports"][0]["trial_id"]
    assert f"best trial:      {trial_id}" in summary
    best_dir = next(p for p in (tmp_path / "e2e").iterdir() if trial_id in p.name and p.is_dir())
    assert f"best trial dir:  {best_dir}" in summary
    rows = list(csv.DictReader((tmp_path / "e2e" / "trials.csv").open()))
    assert sorted(r["trial_id"] for r in rows) == sorted(t["reports"][0]["trial_id"] for t in trials)
    assert {r["status"] for r in rows} <= {"finished", "stopped by the scheduler"}
    # the driver saw Tune end each trial (its on_trial_complete): what trials.csv trusts over a missing `done`
    from orchestrator.fault_lines import ended_by_tune

    assert {r["trial_id"] for r in rows} <= ended_by_tune()
    assert "python -m publishing.upload --load_model_dir" in summary and "from_pretrained(" in summary

    # what mattered, recounted from each trial's reports: a full trial's steps are a finished trial's last step, and
    # every trial the scheduler stopped saved the steps it did not run, at the finished trials' median seconds per
    # step (1 CPU each)
    import math

    status = {r["trial_id"]: r["status"] for r in rows}
    last = {t["reports"][0]["trial_id"]: t["reports"][-1] for t in trials}
    full = max(last[t]["step"] for t in status if status[t] == "finished")
    assert all(last[t]["step"] == full for t in status if status[t] == "finished")
    stopped = [t for t in status if status[t] == "stopped by the scheduler"]
    saved = sum(full - last[t]["step"] for t in stopped)
    saved_line = re.search(rf"early stopping:  saved {saved} of {4 * full} steps \({saved / (4 * full):.1%}\), "
                           r"about (\S+) CPU-hours\n", summary)
    assert saved_line, summary
    import statistics

    pace = statistics.median(last[t]["time_total_s"] / last[t]["step"] for t in status if status[t] == "finished")
    saved_s = sum((full - last[t]["step"]) * pace for t in stopped)
    assert math.isclose(float(saved_line.group(1)), saved_s / 3600, rel_tol=0.06, abs_tol=1e-12)
    spent = re.search(r"compute:         (\S+) CPU-hours over 4 trials\n", summary)
    assert spent and math.isclose(float(spent.group(1)), sum(r["time_total_s"] for r in last.values()) / 3600,
                                  rel_tol=0.06)
    assert re.search(r"importances:     (learning_rate|r|alpha) \d\.\d\d, .* \(fANOVA over 4 trials", summary)
    for png in ("param_importances.png", "parallel_coordinates.png"):
        assert f"plot:            {tmp_path / 'e2e' / 'plots' / png}" in summary
        assert (tmp_path / "e2e" / "plots" / png).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    # once the sweep is over, each trial keeps its two best checkpoints and its latest (as Tune's retention did)
    assert "checkpoints: kept each trial's 2 best and its latest; deleted" in out
    for t in trials:
        folder = next(p for p in (tmp_path / "e2e").iterdir() if t["reports"][0]["trial_id"] in p.name)
        by_loss = sorted(t["reports"], key=lambda r: r["eval_loss"])
        expected = {r["checkpoint_dir_name"] for r in [*by_loss[:2], t["reports"][-1]]}
        assert {p.name for p in folder.glob("checkpoint_*")} == expected

    # every checkpointed report reached the coordinator, and the summary says how late
    lag = re.search(r"coordinator:     (\d+) results reached the coordinator (\S+) s after their report \(median; "
                    r"worst (\S+) s, \w+@\d+\)", summary)
    assert lag and int(lag.group(1)) == sum(len(t["reports"]) for t in trials), summary
    assert 0 <= float(lag.group(2)) <= float(lag.group(3)) < 60

    merged = tmp_path / "e2e" / "best_model"
    assert f"merged model:    {merged}" in summary
    # offline: publish.json describes the folder exactly as it would be uploaded
    publish_json = tmp_path / "e2e" / "publish.json"
    assert f"publish.json:    {publish_json}" in summary
    record = json.loads(publish_json.read_text())
    model_id = ModelId.from_compressed_str(record["model_id"])
    assert model_id.commit is None and model_id.competition_id == "m1"
    assert record["model_dir"] == str(merged) and model_id.hash == record["hash"] == hash_directory(merged)
    assert record["eval_loss"] == best_loss
    assert not list(merged.glob("adapter*"))
    model = AutoModelForCausalLM.from_pretrained(merged, use_safetensors=True)
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert (merged / "tokenizer.json").is_file() and (merged / "tokenizer_config.json").is_file()


@pytest.mark.slow
def test_seed_grid_runs_exactly_its_twelve_combinations(local_ray, tmp_path, capsys):
    """The original's grid, each combination once; with --reuse_workers, trial after trial in the same workers (two
    at a time on the session's 2 CPUs), each from its own start: the step count starts over, the config is its own."""
    code = main(["--search", "seed_grid", "--num_epochs", "1", "--eval_steps", "100", "--scheduler", "fifo",
                 "--reuse_workers", "--storage_path", str(tmp_path), "--experiment_name", "grid", "--no-dashboard"])
    assert code == 0
    trials = trial_results(tmp_path / "grid")
    combos = sorted((t["params"]["learning_rate"], t["params"]["r"], t["params"]["alpha"]) for t in trials)
    expected = sorted((lr, r, 16) for lr in (1e-5, 1e-6, 1e-8, 1e-10) for r in (32, 64, 128))
    assert combos == expected
    workers = {report["pid"] for trial in trials for report in trial["reports"]}
    assert len(workers) < len(trials)  # workers were reused
    for trial in trials:
        assert trial["reports"][0]["training_iteration"] == 1 and trial["reports"][0]["config"] == trial["params"]


@pytest.mark.slow
def test_a_restarted_trial_resumes_from_its_tune_checkpoint(local_ray, model_dir, sweep_data, tmp_path):
    from ray import cloudpickle

    from orchestrator.config import load_config
    from orchestrator.inputs import trial_settings
    from orchestrator.search_space import parse_search_space
    from orchestrator.sweep import run_sweep

    config = load_config(["--num_epochs", "1", "--eval_steps", "10", "--scheduler", "fifo", "--max_failures", "1",
                          "--storage_path", str(tmp_path), "--experiment_name", "restart", "--no-dashboard"])
    space = parse_search_space({"sampler": "grid", "space": {"learning_rate": [5e-4], "r": [8], "alpha": [16]}},
                               "test")
    cloudpickle.register_pickle_by_value(faulty_trials)  # workers cannot import the tests
    from publishing.setup import PublishSetup
    from publishing.publisher import PublishTarget

    settings = trial_settings(config, model_dir)
    outcome = run_sweep(config, space, settings, sweep_data, PublishSetup(PublishTarget()),
                        trial_function=crash_once_after_first_checkpoint)
    from trainables.lora_trial import step_plan

    final = len(step_plan(settings, sweep_data.train))

    assert outcome.errored == 0 and outcome.finished == 1
    [trial] = trial_results(tmp_path / "restart")
    second_attempt = trial["reports"][-1]["trial_started_at"]
    resumed = [r["step"] for r in trial["reports"] if r["trial_started_at"] == second_attempt]
    # The second attempt continued after the checkpoint at step 10 instead of starting over. (Whether the
    # first attempt's own report reached result.json races with its crash, so it is not asserted.)
    assert resumed == [*range(20, final, 10), final] and final > 20
    assert all(r["trial_started_at"] < second_attempt for r in trial["reports"] if r["step"] == 10)


def test_each_node_is_asked_on_itself_and_the_blind_ones_are_named(local_ray, tmp_path):
    import os

    from orchestrator.every_node import ask_each_node, blind_nodes

    probe = tmp_path / "probe"
    probe.write_text("probe")
    answers = ask_each_node(os.path.exists, str(probe))
    assert [sees for _, sees in answers] == [True] and blind_nodes(answers) == []
    missing = ask_each_node(os.path.exists, str(tmp_path / "missing"))
    assert blind_nodes(missing) == [answers[0][0]["NodeManagerAddress"]]


@pytest.mark.slow
def test_a_trial_that_keeps_failing_is_reported_and_the_sweep_goes_on(local_ray, model_dir, sweep_data, tmp_path):
    from ray import cloudpickle

    from orchestrator.config import load_config
    from orchestrator.inputs import trial_settings
    from orchestrator.search_space import parse_search_space
    from orchestrator.summary import render_summary
    from orchestrator.sweep import run_sweep
    from publishing.publisher import PublishTarget
    from publishing.setup import PublishSetup

    config = load_config(["--num_epochs", "1", "--eval_steps", "10", "--scheduler", "fifo", "--max_failures", "2",
                          "--storage_path", str(tmp_path), "--experiment_name", "failing", "--no-dashboard"])
    space = parse_search_space({"sampler": "grid", "space": {"learning_rate": [1e-3, 1e-4], "r": [8], "alpha": [16]}},
                               "test")
    cloudpickle.register_pickle_by_value(faulty_trials)
    outcome = run_sweep(config, space, trial_settings(config, model_dir), sweep_data, PublishSetup(PublishTarget()),
                        trial_function=fail_at_one_learning_rate)
    assert outcome.errored == 1 and outcome.finished == 1
    assert outcome.best_hyperparameters["learning_rate"] == 1e-3
    summary = render_summary(outcome, config)
    assert "1 failed" in summary
    assert "RuntimeError: injected: this trial always fails" in summary  # the reason, in one line
    rows = list(csv.DictReader((tmp_path / "failing" / "trials.csv").open()))
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["learning_rate"] == "0.0001"
    assert failed[0]["reason"] == "RuntimeError: injected: this trial always fails"
    [error] = tmp_path.glob("failing/*/error.txt")
    # tried 1 + --max_failures times, each failure recorded, then given up on
    assert error.read_text().count("RuntimeError: injected: this trial always fails") == 3
    assert "Failure # 3" in error.read_text() and "Failure # 4" not in error.read_text()


@pytest.mark.slow
def test_trials_stopped_by_the_scheduler_hand_their_worker_on_without_losing_the_next_trial(
        local_ray, model_dir, sweep_data, tmp_path):
    from ray import cloudpickle

    from orchestrator.config import load_config
    from orchestrator.inputs import trial_settings
    from orchestrator.search_space import parse_search_space
    from orchestrator.sweep import run_sweep
    from orchestrator.trial_records import TrialStatus
    from publishing.publisher import PublishTarget
    from publishing.setup import PublishSetup

    # One trial at a time, in the grid sampler's seeded order, so the run is the same every time; four learning
    # rates that learn at four speeds, so ASHA stops every trial that reaches a rung behind an earlier one.
    config = load_config(["--num_epochs", "1", "--eval_steps", "10", "--scheduler", "asha", "--grace_period", "1",
                          "--max_concurrent_trials", "1", "--reuse_workers", "--storage_path", str(tmp_path),
                          "--experiment_name", "reuse", "--no-dashboard"])
    space = parse_search_space({"sampler": "grid", "space": {"learning_rate": [1e-3, 1e-4, 1e-5, 1e-6],
                                                             "r": [8], "alpha": [16]}}, "test")
    cloudpickle.register_pickle_by_value(faulty_trials)
    outcome = run_sweep(config, space, trial_settings(config, model_dir), sweep_data, PublishSetup(PublishTarget()),
                        trial_function=slow_to_clean_up)
    statuses = [t.status for t in outcome.trials]
    assert TrialStatus.STOPPED in statuses  # the case under test happened: a trial was stopped, its worker reused
    assert outcome.errored == 0, [t.reason for t in outcome.trials]
    assert outcome.num_trials == 4 and outcome.finished + outcome.stopped_early == 4
    workers = {report["pid"] for trial in trial_results(tmp_path / "reuse") for report in trial["reports"]}
    assert len(workers) == 1  # one trial at a time, each in the worker of the one before
