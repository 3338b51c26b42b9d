"""Head-to-head the validators' way, and --comparison_uid / --require_win."""

import json

import pytest

from publishing.subnet.epsilon import Epsilon

from orchestrator.config import load_config
from orchestrator.inputs import resolve_opponent, trial_settings
from orchestrator.search_space import parse_search_space
from orchestrator.summary import render_summary
from orchestrator.sweep import run_sweep
from tests.in_memory_chain import InMemoryChain, chain_with_rival
from publishing.coordinator import PublishCoordinator
from publishing.rules import Action
from publishing.subnet.iswin import compare, iswin
from publishing.publisher import Candidate, Publisher, PublishTarget
from publishing.setup import PublishSetup
from tests.hub_server import local_hub  # noqa: F401  (the fixture)


def test_iswin_gives_the_earlier_commitment_one_percent():
    assert iswin(0.995, 1.0, block_i=10, block_j=5) is False  # 0.5% better but later: loses
    assert iswin(0.98, 1.0, block_i=10, block_j=5) is True
    assert iswin(1.0, 1.0, block_i=5, block_j=10) is True  # a tie goes to the earlier one
    assert iswin(1.0, 1.0, block_i=5, block_j=5) is False


def test_win_rate_counts_pairs():
    result = compare([1.0, 2.0, 0.5, 3.0], [1.2, 1.0, 0.6, 3.0], our_block=float("inf"), their_block=1, uid=3,
                     their_model="m")
    assert (result.wins, result.pairs, result.win_rate) == (2, 4, 0.5)
    assert result.our_loss == pytest.approx(1.625) and "win rate 50.0%" in result.line()
    with pytest.raises(ValueError):
        compare([1.0], [1.0, 2.0], 1, 2, 3, "m")


def test_the_competitions_epsilon_decides_close_pairs():
    ours, theirs = [0.97, 0.96], [1.0, 1.0]  # 3% and 4% better, committed later
    assert compare(ours, theirs, float("inf"), 1, 3, "m").wins == 2  # m1's constant 1%
    fresh = Epsilon(0.05, 0.01, 21_600).at(current_block=100, model_block=100)  # competition 4, just committed
    assert compare(ours, theirs, float("inf"), 1, 3, "m", epsilon=fresh).wins == 0
    halfway = Epsilon(0.05, 0.01, 21_600).at(current_block=10_900, model_block=100)  # 3% after 10,800 blocks
    assert compare(ours, theirs, float("inf"), 1, 3, "m", epsilon=halfway).wins == 1


def test_require_win_keeps_a_losing_model_off_the_hub(model_dir, tmp_path):
    publisher = Publisher(PublishTarget(repo_id="me/model"), str(model_dir), tmp_path, "sweep",
                          hub=None, chain=InMemoryChain("5Hot"))  # nothing may reach a Hub
    coordinator = PublishCoordinator(publisher, tmp_path, background=False,
                                     gate=lambda folder: (False, "win rate 40% against uid 3"))
    coordinator.offer(Candidate("t", 1, 3.0, {}, model_dir=str(model_dir)))
    decision = coordinator.step()
    assert decision.action is Action.SKIP and "win rate 40%" in decision.reason
    assert coordinator.step().action is Action.SKIP and publisher.chain.history == []


@pytest.fixture
def opponent_on_chain(local_hub, model_dir, tmp_path, monkeypatch):
    """uid 1 has committed the untrained tiny model."""
    monkeypatch.setenv("LORA_SWEEP_CACHE", str(tmp_path / "cache"))
    return chain_with_rival(local_hub.url, model_dir, tmp_path)[0]


@pytest.mark.slow
def test_comparison_uid_compares_the_best_model_at_the_end(local_ray, local_hub, opponent_on_chain, model_dir,
                                                           sweep_data, tmp_path):
    config = load_config(["--comparison_uid", "1", "--num_epochs", "2", "--scheduler", "fifo",
                          "--storage_path", str(tmp_path / "r"), "--experiment_name", "h2h", "--no-dashboard"])
    opponent = resolve_opponent(config, chain_factory=lambda: opponent_on_chain, hub_endpoint=local_hub.url)
    assert opponent.uid == 1 and opponent.model_id.startswith("rival:tiny:")
    space = parse_search_space({"sampler": "grid", "space": {"learning_rate": [1e-3], "r": [16], "alpha": [32]}}, "t")
    outcome = run_sweep(config, space, trial_settings(config, model_dir), sweep_data,
                        PublishSetup(PublishTarget()), opponent=opponent)

    assert outcome.comparison.win_rate > 0.9  # trained beats untrained on nearly every pair
    record = json.loads((tmp_path / "r" / "h2h" / "comparison.json").read_text())
    assert len(record["our_pair_losses"]) == len(record["their_pair_losses"]) == len(sweep_data.eval)
    assert record["their_loss"] == pytest.approx(outcome.base_eval_loss, rel=1e-4)  # the rival is the base model
    assert "head-to-head:    vs uid 1" in render_summary(outcome, config)


def test_a_bad_comparison_uid_fails_before_training(local_hub, opponent_on_chain):
    from orchestrator.config import ConfigError

    with pytest.raises(ConfigError, match="--comparison_uid: uid 0 has no model committed"):
        resolve_opponent(load_config(["--comparison_uid", "0"]), chain_factory=lambda: opponent_on_chain,
                         hub_endpoint=local_hub.url)
