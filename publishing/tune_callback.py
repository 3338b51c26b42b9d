"""The Tune callback that feeds every checkpoint to the PublishCoordinator actor."""

from ray import tune

from publishing.coordinator_actor import NAMESPACE, actor_name, coordinator_for
from publishing.publisher import Candidate
from trainables.hyperparameters import Hyperparameters
from trainables.trial_contract import EVAL_LOSS, REPORTED_AT, STEP


class PublishCallback(tune.Callback):
    """Offers every checkpoint to the coordinator; fire-and-forget, so Tune's loop never waits on publishing.

    It finds the coordinator by the sweep's id rather than holding a handle: Tune saves callbacks with the
    experiment, and a resumed sweep must reach its new coordinator, not the one that died. Through the driver's
    `CoordinatorLink` it checks at each result that the coordinator lives, and has it restarted when not; the link
    (which holds the publishing credentials) stays in the driver's memory, never in this callback.
    """

    def __init__(self, sweep_id: str):
        self.sweep_id = sweep_id

    def on_trial_result(self, iteration, trials, trial, result, **info):
        link = coordinator_for(self.sweep_id)
        if link is not None:
            link.check()  # never waits: reads an earlier ping's answer, sends a ping at most every few seconds

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        result = trial.last_result  # Tune processes a result before saving its checkpoint
        # Only a full evaluation carries eval_loss (the whole held-out set's, as validators score): a checkpoint
        # reported with the rank subset's loss alone is a resume point, never a candidate, so no subset-scored
        # number is ever compared with a published model's loss or published itself.
        if EVAL_LOSS not in result:
            return
        candidate = Candidate(trial_id=trial.trial_id, step=int(result.get(STEP, 0)),
                              eval_loss=float(result[EVAL_LOSS]),
                              hyperparameters=Hyperparameters.from_mapping(trial.config).as_dict(),
                              checkpoint=checkpoint, reported_at=result.get(REPORTED_AT))
        link = coordinator_for(self.sweep_id)
        if link is not None:
            link.offer(candidate)
            return
        import ray  # a coordinator this driver did not start: found by name, unchecked

        ray.get_actor(actor_name(self.sweep_id), namespace=NAMESPACE).offer.remote(candidate)
