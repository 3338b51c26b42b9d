"""--comparison_uid and --require_win: our best model against another miner's committed model.

The opponent is resolved and downloaded at the edge (a bad uid fails before training); its
per-pair losses are measured once on a worker; ours are measured for the best model at the
end, and, with --require_win, for every model before it may be published.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from publishing.subnet.iswin import Comparison, compare
from trainables.data import TokenizedSplit
from trainables.lora_trial import TrialSettings, model_pair_losses

NOT_COMMITTED = float("inf")  # our model would be committed after theirs: theirs gets epsilon's advantage


@dataclass(frozen=True)
class Opponent:
    uid: int
    model_id: str
    block: int
    model_dir: str
    # the competition's epsilon at the block the sweep started, against their commit block; a decaying epsilon
    # only shrinks while the sweep runs, so the value at the start is the cautious one
    epsilon: float = 0.01


def remote_pair_losses(model_dir: str, settings: TrialSettings, split: TokenizedSplit, options: dict) -> list[float]:
    import ray

    return ray.get(ray.remote(model_pair_losses).options(**options).remote(model_dir, settings, split))


@dataclass(frozen=True)
class WinGate:
    """Lets the coordinator publish a model only if it beats the opponent on more than half of the pairs."""
    opponent: Opponent
    their_losses: list
    settings: TrialSettings
    eval_split: TokenizedSplit
    options: dict

    def __call__(self, model_dir: str) -> tuple[bool, str]:
        ours = remote_pair_losses(model_dir, self.settings, self.eval_split, self.options)
        result = compare(ours, self.their_losses, NOT_COMMITTED, self.opponent.block, self.opponent.uid,
                         self.opponent.model_id, self.opponent.epsilon)
        return result.win_rate > 0.5, result.line()


def head_to_head(opponent: Opponent, their_losses: list[float], best_model_dir: str, settings: TrialSettings,
                 eval_split: TokenizedSplit, options: dict, experiment_dir: str) -> Comparison:
    ours = remote_pair_losses(best_model_dir, settings, eval_split, options)
    result = compare(ours, their_losses, NOT_COMMITTED, opponent.block, opponent.uid, opponent.model_id,
                     opponent.epsilon)
    record = {**result.record(), "our_block": None, "their_block": opponent.block,
              "our_pair_losses": ours, "their_pair_losses": their_losses}
    (Path(experiment_dir) / "comparison.json").write_text(json.dumps(record, indent=2))
    return result
