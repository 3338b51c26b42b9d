"""The Ray side of publishing: the named PublishCoordinator actor and the Tune callback that feeds it."""

from ray import tune

from publishing.coordinator import ACTOR_NAME
from publishing.coordinator_host import CoordinatorHost
from publishing.publisher import Candidate
from publishing.setup import PublishSetup

HYPERPARAMETERS = ("learning_rate", "r", "alpha")


NAMESPACE = "lora-sweep"


def actor_name(sweep_id: str) -> str:
    return f"{ACTOR_NAME}:{sweep_id}"  # one coordinator per experiment, so sweeps can share a cluster


def start_coordinator(setup: PublishSetup, base_model_dir: str, experiment_dir: str, sweep_id: str):
    """The actor runs on the driver's node (num_cpus=0: it mostly waits), so the folders it writes are here."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(CoordinatorHost).options(name=actor_name(sweep_id), namespace=NAMESPACE, num_cpus=0,
                                                scheduling_strategy=here, max_concurrency=2)
    return actor.remote(setup, base_model_dir, experiment_dir, sweep_id)


class PublishCallback(tune.Callback):
    """Offers every checkpoint to the coordinator; fire-and-forget, so Tune's loop never waits on publishing.

    It finds the coordinator by name rather than holding a handle: Tune saves callbacks with the
    experiment, and a resumed sweep must reach its new coordinator, not the one that died.
    """

    def __init__(self, sweep_id: str):
        self.sweep_id = sweep_id

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        result = trial.last_result  # Tune processes a result before saving its checkpoint
        if "eval_loss" not in result:
            return
        candidate = Candidate(trial_id=trial.trial_id, step=int(result.get("step", 0)),
                              eval_loss=float(result["eval_loss"]),
                              hyperparameters={k: trial.config[k] for k in HYPERPARAMETERS if k in trial.config},
                              checkpoint=checkpoint)
        import ray

        ray.get_actor(actor_name(self.sweep_id), namespace=NAMESPACE).offer.remote(candidate)
