"""A model scored where a trial would run. On a cluster the driver (of `orchestrator.mine`, or of a sweep with
--comparison_uid) sits on a CPU-only head: the models it scores are fetched into its own Hub cache, or merged on its
own disk (where the storage is a bucket). The GPU node that scores one fetches a Hub model itself, and is sent the
files of a folder it cannot read; either way it computes what this process would."""

import dataclasses
import json

import pytest

from publishing.head_to_head import reaching_the_folder
from tests.hub_server import local_hub  # noqa: F401  (the fixture)
from trainables.lora_trial import (TrainingSettings, TrialSettings, folder_pair_losses, model_folder_files,
                                   model_pair_losses)
from trainables.model_loading import is_model_file


@pytest.fixture(scope="module")
def settings(model_dir) -> TrialSettings:
    return TrialSettings(model_dir=str(model_dir), training=TrainingSettings(), cpus_per_trial=1, device="cpu")


def model_files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if is_model_file(p.name)}


def test_a_node_without_a_hub_models_folder_fetches_it_then_scores_it(local_hub, model_dir, settings, sweep_data,
                                                                      tmp_path):
    """--comparison_uid's opponent and a round's leader are fetched into the driver's Hub cache; a GPU node lacks
    that folder and downloads the same commit into the same path first (as it does for the starting model)."""
    commit = local_hub.add_commit("rival/tiny", model_files(model_dir))
    snapshot = tmp_path / "another-node" / "models--rival--tiny" / "snapshots" / commit
    remote = dataclasses.replace(settings, hub_endpoint=local_hub.url)

    losses = model_pair_losses(str(snapshot), remote, sweep_data.eval)
    assert snapshot.is_dir() and any(method == "GET" and "/resolve/" in path for method, path, _ in local_hub.request_log)
    assert losses == model_pair_losses(str(model_dir), settings, sweep_data.eval)


def test_a_folder_the_node_cannot_read_is_sent_to_it_and_scores_the_same(model_dir, settings, sweep_data, tmp_path):
    """A round's merged model on the driver's own disk: the task that cannot read it answers None, then scores the
    files the driver sends, written to a folder of its own; only a model's files travel (no pickles, no code)."""
    folder = tmp_path / "driver-disk" / "best_model"
    folder.mkdir(parents=True)
    for name, data in model_files(model_dir).items():
        (folder / name).write_bytes(data)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04 not ours to unpickle")
    (folder / "modeling_evil.py").write_text("raise SystemExit('never run')\n")
    not_here = str(tmp_path / "what-the-gpu-node-sees" / "best_model")

    assert folder_pair_losses(not_here, settings, sweep_data.eval) is None
    sent = model_folder_files(str(folder))
    assert set(sent) == set(model_files(model_dir)) and "pytorch_model.bin" not in sent and "modeling_evil.py" not in sent
    shipped = []
    losses = reaching_the_folder(lambda files: folder_pair_losses(not_here, settings, sweep_data.eval, files),
                                 lambda: shipped.append(1) or model_folder_files(str(folder)))
    assert shipped == [1] and losses == model_pair_losses(str(model_dir), settings, sweep_data.eval)
    # a folder the node reads is scored where it is: nothing is sent
    assert reaching_the_folder(lambda files: folder_pair_losses(str(folder), settings, sweep_data.eval, files),
                               lambda: shipped.append(2)) == losses and shipped == [1]


def test_score_on_a_cluster_runs_each_model_as_a_ray_task_and_prints_what_this_process_prints(local_ray, model_dir,
                                                                                             tmp_path, capsys):
    """`orchestrator.score --address ...` (and orchestrator.mine's contenders on a cluster): each model scored as a Ray
    task with a trial's resources (here a CPU: the session's Ray has no GPU) gives the numbers scored in this process."""
    from orchestrator.score import main

    flags = ["--seed", "3", "--load_model_dir", str(model_dir), "--tokenizer", "model"]
    assert main([*flags, "--json", str(tmp_path / "here.json")]) == 0
    here = capsys.readouterr().out
    address = local_ray.get_runtime_context().gcs_address
    assert main([*flags, "--address", address, "--json", str(tmp_path / "there.json")]) == 0
    there = capsys.readouterr().out
    assert f"scoring on the cluster ({address}): each model as a Ray task with 1 CPU(s), as a trial runs" in there
    assert "scoring on the cluster" not in here
    (ours,), (theirs,) = (json.loads((tmp_path / f"{name}.json").read_text())["models"] for name in ("here", "there"))
    assert theirs["pair_losses"] == pytest.approx(ours["pair_losses"], abs=1e-6)
    assert theirs["score"] == pytest.approx(ours["score"], abs=1e-6)


def test_a_mining_rounds_contenders_are_scored_on_the_cluster_it_joined(local_ray, model_dir, monkeypatch, capsys):
    """orchestrator.mine with --address: its contenders are scored on the cluster (a GPU node there), with the
    numbers a driver without --address computes in its own process."""
    from orchestrator.config import load_config
    from orchestrator.contenders import Contenders, score_contenders
    from orchestrator.score import Contender

    monkeypatch.setenv("LORA_SWEEP_CACHE", str(model_dir.parent))
    ours = Contenders(ours=Contender("round 1's best model", model_dir))
    flags = ["--seed", "3"]
    _, here, _, _, samples = score_contenders(load_config(flags), ours, model_dir, True, None)
    assert "on the cluster" not in capsys.readouterr().out
    address = local_ray.get_runtime_context().gcs_address
    _, there, _, _, _ = score_contenders(load_config([*flags, "--address", address]), ours, model_dir, True, None)
    assert "scoring 1 model(s) on the cluster, each as a Ray task with 1 CPU(s)" in capsys.readouterr().out
    assert samples > 0 and there.score == pytest.approx(here.score, abs=1e-6)
