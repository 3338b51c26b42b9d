import math

from publishing.rules import Action, beats, decide, last_commit_time

NOW = 1_000_000.0


def rule(loss, **kw):
    args = {"threshold": 5.0, "published_loss": None, "min_improvement": 0.01, "now": NOW, "last_committed_at": None}
    return decide(loss, **{**args, **kw})


def test_publishes_a_first_model_below_the_threshold():
    assert rule(4.0).action is Action.PUBLISH


def test_skips_above_the_threshold_and_non_numbers():
    assert rule(5.1).action is Action.SKIP
    assert rule(math.nan).action is Action.SKIP and rule(math.inf).action is Action.SKIP


def test_needs_to_beat_the_published_model_by_more_than_epsilon():
    assert not beats(3.97, 4.0, 0.01)  # 0.75% better: a later commitment would lose the tie
    assert beats(3.95, 4.0, 0.01)
    assert rule(3.97, published_loss=4.0).action is Action.SKIP
    assert rule(4.5, published_loss=4.0).action is Action.SKIP  # never a worse one
    assert rule(3.9, published_loss=4.0).action is Action.PUBLISH


def test_waits_for_the_twenty_minute_window():
    decision = rule(3.0, published_loss=4.0, last_committed_at=NOW - 600)
    assert decision.action is Action.WAIT and decision.not_before == NOW + 600
    assert rule(3.0, published_loss=4.0, last_committed_at=NOW - 1200).action is Action.PUBLISH


def test_the_later_of_chain_and_local_state_counts():
    # local state says 30 minutes ago, but the chain holds a commitment from 10 blocks (2 minutes) ago
    assert last_commit_time(NOW, NOW - 1800, chain_block=990, current_block=1000) == NOW - 120
    # the chain's record is older than our own (e.g. the read lagged): local state wins
    assert last_commit_time(NOW, NOW - 60, chain_block=900, current_block=1000) == NOW - 60
    assert last_commit_time(NOW, None, None, None) is None


def test_an_unevaluated_commitment_is_held_until_validators_evaluate_it():
    held = rule(3.9, published_loss=4.0, hold_until=NOW + 600, hold_reason="keeping it")
    assert held.action is Action.WAIT and held.not_before == NOW + 600 and held.reason == "keeping it"
    assert rule(3.9, published_loss=4.0, hold_until=NOW).action is Action.PUBLISH  # evaluated now: the usual rule
    assert rule(4.5, published_loss=4.0, hold_until=NOW + 600).action is Action.SKIP  # a worse one is never held
