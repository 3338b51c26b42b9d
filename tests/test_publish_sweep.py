"""A sweep that publishes: the Tune callback feeds the PublishCoordinator actor, which uploads to the
local Hub and commits to an in-process chain living in the actor, at most once per 20 minutes."""

import functools
import json

import pytest

from orchestrator.config import load_config
from orchestrator.inputs import trial_settings
from orchestrator.search_space import load_search_space
from orchestrator.summary import render_summary
from orchestrator.sweep import run_sweep
from tests.in_memory_chain import InMemoryChain
from publishing.publish_state import STATE_FILE
from publishing.subnet.model_id import ModelId
from publishing.publisher import PublishTarget
from publishing.subnet.secrets import Secret
from publishing.setup import PublishSetup
from tests.hub_server import local_hub  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow

TOKEN = "hf_test_token"
REPO = "miner/swept"


def test_a_sweep_publishes_once_inside_the_window(local_ray, local_hub, model_dir, sweep_data, tmp_path, capsys):
    # Three epochs: trials keep improving for a while after the first model goes out, even on a fast machine
    # (with one epoch both trials could end before the first publish, which then took the final best).
    config = load_config(["--num_samples", "2", "--num_epochs", "3", "--scheduler", "fifo", "--hf_repo_id", REPO,
                          "--wallet.name", "cold", "--wallet.hotkey", "hot", "--storage_path", str(tmp_path),
                          "--experiment_name", "publishing", "--no-dashboard"])
    setup = PublishSetup(target=PublishTarget(repo_id=REPO, competition_id="m1"), token=Secret(TOKEN),
                         hub_endpoint=local_hub.url,
                         chain_factory=functools.partial(InMemoryChain, "5SweptHotkeyxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"))
    outcome = run_sweep(config, load_search_space("default"), trial_settings(config, model_dir), sweep_data, setup)

    experiment = tmp_path / "publishing"
    state = json.loads((experiment / STATE_FILE).read_text())
    assert len(state["published"]) == 1  # the first model went out; better ones wait for the window
    published = ModelId.from_compressed_str(state["published"][0]["model_id"])
    assert local_hub.commits(REPO)[1:] == [published.commit]
    assert state["published"][0]["eval_loss"] > outcome.best_eval_loss

    summary = render_summary(outcome, config)
    assert f"published:       {published.to_compressed_str()}" in summary
    assert "not yet published: the 20-minute window opens at" in summary
    assert f"python -m publishing.upload --load_model_dir {outcome.best_model_dir} --hf_repo_id {REPO}" in summary
    record = json.loads((experiment / "publish.json").read_text())
    assert record["eval_loss"] == outcome.best_eval_loss and ModelId.from_compressed_str(record["model_id"]).commit is None

    out = capsys.readouterr().out
    assert TOKEN not in out
    for path in experiment.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
