"""A model scored where a trial would run. On a cluster the driver (of `orchestrator.mine`, or of a sweep with
--comparison_uid) sits on a CPU-only head: the models it scores are fetched into its own Hub cache, or merged on its
own disk (where the storage is a bucket). The GPU node that scores one fetches a Hub model itself, and is sent the
files of a folder it cannot read; either way it computes what this process would."""

import dataclasses
import fnmatch

import pytest

from orchestrator.config import load_config
from orchestrator.inputs import data_competition, prepare_eval_data
from orchestrator.score import Contender, score_model
from publishing.head_to_head import reaching_the_folder
from tests.hub_server import local_hub  # noqa: F401  (the fixture)
from trainables.lora_trial import (TrainingSettings, TrialSettings, folder_pair_losses, model_folder_files,
                                   model_pair_losses)
from trainables.model_loading import STARTING_MODEL_PATTERNS


@pytest.fixture(scope="module")
def settings(model_dir) -> TrialSettings:
    return TrialSettings(model_dir=str(model_dir), training=TrainingSettings(), cpus_per_trial=1, device="cpu")


def model_files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()
            if any(fnmatch.fnmatch(p.name, pattern) for pattern in STARTING_MODEL_PATTERNS)}


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


def test_a_ray_task_with_a_trials_resources_scores_as_this_process_does(local_ray, model_dir, monkeypatch):
    """orchestrator.mine's contenders on a GPU cluster: score_model as a Ray task (here with a CPU) gives the number
    orchestrator.score prints in this process."""
    monkeypatch.setenv("LORA_SWEEP_CACHE", str(model_dir.parent))
    config = load_config(["--seed", "3", "--cpus_per_trial", "1"])
    eval_split, tasks = prepare_eval_data(config, model_dir, None)
    contender = Contender("the embedded model", model_dir, embedded=True)
    here = score_model(config, contender, eval_split, tasks, data_competition(config))
    there = score_model(config, contender, eval_split, tasks, data_competition(config),
                        task_options={"num_cpus": 1, "num_gpus": 0})
    assert there.pair_losses == pytest.approx(here.pair_losses, abs=1e-6) and there.score == pytest.approx(here.score, abs=1e-6)
