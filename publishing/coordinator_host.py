"""The PublishCoordinator's Ray actor class, in a module of its own: the actor's process imports only this
(not Ray Tune, which the callback in publishing.actor needs), so it starts light beside the first trials."""

import threading

from publishing.coordinator import PublishCoordinator
from publishing.merged_model import import_merge_libraries
from publishing.publisher import Candidate
from publishing.setup import PublishSetup


class CoordinatorHost:
    """Builds the Publisher inside the actor, so its Hub client and chain connection live here only."""

    def __init__(self, setup: PublishSetup, base_model_dir: str, experiment_dir: str, sweep_id: str):
        publisher = setup.publisher(base_model_dir, experiment_dir, sweep_id)
        self.coordinator = PublishCoordinator(publisher, experiment_dir, gate=setup.gate)
        # Import the merge libraries now, beside the trials' start, so the first good model is published without
        # waiting for them. (Not at a lower priority: the publishing thread would wait on the import lock of a
        # starved thread, and publish late.)
        threading.Thread(target=import_merge_libraries, daemon=True, name="warm-imports").start()

    def offer(self, candidate: Candidate) -> bool:
        return self.coordinator.offer(candidate)

    def finish(self, wait_for_window: bool) -> dict:
        return self.coordinator.finish(wait_for_window)

