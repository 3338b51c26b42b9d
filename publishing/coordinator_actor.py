"""The PublishCoordinator as a named Ray actor on the driver's node, and how the sweep starts it.

The actor's process imports only this module and what it imports (not Ray Tune, which the callback in
publishing.tune_callback needs), so it starts light beside the first trials."""

import threading

from publishing.coordinator import PublishCoordinator
from publishing.merged_model import import_merge_libraries
from publishing.publisher import Candidate
from publishing.setup import PublishSetup

ACTOR_NAME = "PublishCoordinator"
NAMESPACE = "lora-sweep"


def actor_name(sweep_id: str) -> str:
    return f"{ACTOR_NAME}:{sweep_id}"  # one coordinator per experiment, so sweeps can share a cluster


def start_coordinator(setup: PublishSetup, base_model_dir: str, experiment_dir: str, sweep_id: str,
                      work_dir: str | None = None):
    """The actor runs on the driver's node (num_cpus=0: it mostly waits), so the folders it writes are here.
    `experiment_dir` may be an object-storage URI; the merged model then goes to `work_dir`, a local folder."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(CoordinatorActor).options(name=actor_name(sweep_id), namespace=NAMESPACE, num_cpus=0,
                                                 scheduling_strategy=here, max_concurrency=2)
    return actor.remote(setup, base_model_dir, experiment_dir, sweep_id, work_dir)


class CoordinatorActor:
    """Builds the Publisher inside the actor, so its Hub client and chain connection live here only."""

    def __init__(self, setup: PublishSetup, base_model_dir: str, experiment_dir: str, sweep_id: str,
                 work_dir: str | None = None):
        publisher = setup.publisher(base_model_dir, work_dir or experiment_dir, sweep_id)
        self.coordinator = PublishCoordinator(publisher, experiment_dir, gate=setup.gate)
        # Import the merge libraries now, beside the trials' start, so the first good model is published without
        # waiting for them. (Not at a lower priority: the publishing thread would wait on the import lock of a
        # starved thread, and publish late.)
        threading.Thread(target=import_merge_libraries, daemon=True, name="warm-imports").start()

    def offer(self, candidate: Candidate) -> bool:
        return self.coordinator.offer(candidate)

    def finish(self, wait_for_window: bool) -> dict:
        return self.coordinator.finish(wait_for_window)

