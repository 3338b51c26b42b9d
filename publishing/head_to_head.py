"""--comparison_uid and --require_win: our best model against another miner's committed model.

The opponent is resolved and downloaded at the edge (a bad uid fails before training); its
per-pair losses are measured once on a worker; ours are measured for the best model at the
end, and, with --require_win, for every model before it may be published.
"""

import json
from dataclasses import dataclass

from publishing import storage
from publishing.subnet.constants import VALIDATOR_EPSILON
from publishing.subnet.iswin import Comparison, compare, compare_scores
from trainables.data import EvalTask, TokenizedSplit
from trainables.scoring import competition_score
from trainables.lora_trial import TrialSettings, folder_pair_losses, model_folder_files

NOT_COMMITTED = float("inf")  # our model would be committed after theirs: theirs gets epsilon's advantage


@dataclass(frozen=True)
class Opponent:
    uid: int
    model_id: str
    block: int
    model_dir: str
    # the competition's epsilon at the block the sweep started, against their commit block; a decaying epsilon
    # only shrinks while the sweep runs, so the value at the start is the cautious one
    epsilon: float = VALIDATOR_EPSILON


def remote_pair_losses(model_dir: str, settings: TrialSettings, split: TokenizedSplit, options: dict) -> list[float]:
    """A model folder's per-pair losses, as a Ray task with `options` (a trial's resources: on a GPU node where trials
    use GPUs). A folder that node can neither read nor fetch from the Hub (a merged model on the driver's own disk,
    where the storage is a bucket) is sent to it through Ray's object store."""
    import ray

    task = ray.remote(folder_pair_losses).options(**options)
    return reaching_the_folder(lambda files: ray.get(task.remote(model_dir, settings, split, files)),
                               lambda: ray.put(model_folder_files(model_dir)))


def reaching_the_folder(score, ship):
    """score(None): the task reads the folder where it runs, or answers None; then score(ship()): its files sent."""
    losses = score(None)
    return losses if losses is not None else score(ship())


def versus(ours: list[float], theirs: list[float], opponent: Opponent, tasks: tuple[EvalTask, ...]) -> Comparison:
    """The original competitions: per-pair wins with epsilon; a competition of weighted tasks: whole scores."""
    if tasks:
        return compare_scores(competition_score(ours, tasks)[0], competition_score(theirs, tasks)[0], len(ours),
                              opponent.uid, opponent.model_id, opponent.epsilon)
    return compare(ours, theirs, NOT_COMMITTED, opponent.block, opponent.uid, opponent.model_id, opponent.epsilon)


@dataclass(frozen=True)
class WinGate:
    """Lets the coordinator publish a model only if it beats the opponent on more than half of the pairs."""
    opponent: Opponent
    their_losses: list
    settings: TrialSettings
    eval_split: TokenizedSplit
    options: dict
    tasks: tuple[EvalTask, ...] = ()

    def __call__(self, model_dir: str) -> tuple[bool, str]:
        ours = remote_pair_losses(model_dir, self.settings, self.eval_split, self.options)
        result = versus(ours, self.their_losses, self.opponent, self.tasks)
        return result.win_rate > 0.5, result.line()


def head_to_head(opponent: Opponent, their_losses: list[float], best_model_dir: str, settings: TrialSettings,
                 eval_split: TokenizedSplit, options: dict, experiment_dir: str,
                 tasks: tuple[EvalTask, ...] = ()) -> Comparison:
    ours = remote_pair_losses(best_model_dir, settings, eval_split, options)
    result = versus(ours, their_losses, opponent, tasks)
    record = {**result.record(), "our_block": None, "their_block": opponent.block,
              "our_pair_losses": ours, "their_pair_losses": their_losses}
    storage.write_text(storage.join(experiment_dir, "comparison.json"), json.dumps(record, indent=2))
    return result
