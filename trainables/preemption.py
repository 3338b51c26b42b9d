"""Spot preemption with notice: a trial whose node is being drained moves at its next checkpoint, without counting
as a failure.

Cloud providers announce a reclaim (AWS: two minutes, GCP: thirty seconds), and Ray is told of it as a drain of the
node: the GCS DrainNode call with the reason DRAIN_NODE_REASON_PREEMPTION and a deadline, which Ray's autoscaler
(v2) makes for preemption-based termination, a cloud integration can make on the notice, and `ray drain-node` makes
by hand. Ray then schedules nothing new on the node, but what already runs there keeps running until the node goes.

Ray Tune (2.60) already counts a trial's failure as a preemption, not against `max_failures`, when its actor died
with a node that was killed after its preemption deadline (`RayActorError.preempted`); the trial then restarts
from its last checkpoint. A node lost without notice, or before its deadline, is an ordinary failure.

What this adds: a trial checks, right after each checkpointed report, whether its node is draining. If it is,
it ends its attempt there by raising `NodePreempted`, a `RayActorError` with `preempted=True`, so Tune restarts it
from the checkpoint just saved, on a node that is not draining, and does not charge `max_failures`: the work
since the notice is kept and the trial moves at once instead of waiting for the node to die. A trial that reaches
no report before the deadline falls back on Tune's own handling above (its last checkpoint, not charged).
A busy node is only ever drained for preemption (Ray refuses an idle-termination drain of a node with work).
"""

import time

from ray.exceptions import RayActorError


class NodePreempted(RayActorError):
    """This trial's node is being drained for preemption; its latest checkpoint is saved, and Tune restarts it
    elsewhere from there without counting a failure."""

    def __init__(self, message: str = "the node is being drained for preemption"):
        super().__init__(error_msg=message, preempted=True)


def drain_deadline(node_id: str) -> float | None:
    """When `node_id`'s drain ends (seconds since the epoch; 0.0: no deadline given), or None when it is not being
    drained. Asks the GCS (the call Ray Data and Serve make to avoid draining nodes); a failed check is None: a
    trial is never failed by it (a Ray without the call: one line says preemption moves are off)."""
    from trainables.compat import ray_internals

    draining = ray_internals.draining_nodes()  # {node id hex: deadline in ms, 0 for none}, or None
    if draining is None:
        return None
    return draining[node_id] / 1000 if node_id in draining else None


def leave_if_draining(step: int, final_step) -> None:
    """After a checkpointed report: raise NodePreempted when this worker's node is draining and the trial has steps
    left (its final report ends it anyway). `final_step()`: the trial's last step, computed only when draining."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    deadline = drain_deadline(node_id)
    if deadline is None or step >= final_step():
        return
    left = f"{max(0.0, deadline - time.time()):.0f} s before its deadline" if deadline else "without a deadline"
    raise NodePreempted(f"node {node_id[:12]} is being drained for preemption ({left}); the checkpoint at step "
                        f"{step} is saved, and the trial continues from it on another node")
