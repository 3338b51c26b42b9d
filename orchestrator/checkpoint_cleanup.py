"""After a finished sweep, whose best model is merged: the checkpoints no trial keeps go.

Each trial keeps its best checkpoints and its latest while it runs (trainables.checkpoint_retention, which owns the
rule); what is left beyond that is deleted here, once, in parallel (each deletion is a storage call or two).
"""

import math
from concurrent.futures import ThreadPoolExecutor

from trainables.checkpoint_retention import leftovers
from trainables.trial_contract import EVAL_LOSS, TRAINING_ITERATION


def delete_leftover_checkpoints(results) -> int:
    """Delete every trial's checkpoints beyond those the retention rule keeps; how many went. A deletion that fails
    leaves that checkpoint where it is."""
    doomed = []
    for result in results:
        saved = sorted(result.best_checkpoints or [], key=lambda pair: pair[1].get(TRAINING_ITERATION, 0))
        # by the whole set's loss, as each trial kept them: a checkpoint of a subset evaluation is a resume point only
        doomed += leftovers([(checkpoint, metrics.get(EVAL_LOSS, math.nan)) for checkpoint, metrics in saved])

    def delete(checkpoint) -> bool:
        try:
            checkpoint.filesystem.delete_dir(checkpoint.path)
            return True
        except OSError:  # already gone (the trial deleted it), or storage refused: left as it is
            return False

    if not doomed:
        return 0
    with ThreadPoolExecutor(max_workers=min(16, len(doomed))) as pool:
        return sum(pool.map(delete, doomed))
