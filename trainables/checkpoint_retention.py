"""Each trial deletes its own stale checkpoints, so that the driver's loop does no storage work per checkpoint.

Ray Tune's own retention (`CheckpointConfig(num_to_keep=2)`) deletes checkpoints inside the driver's loop, one
storage call each. To keep its experiment snapshot consistent with those deletions, it also forces a snapshot
whenever a trial has checkpointed twice since the last one, and a forced snapshot first waits for the previous
upload of the whole experiment folder. With 64 trials and the experiment in S3, that blocked the loop for most of
the sweep (BENCHMARKS.md, section 6b). So Tune keeps every checkpoint it is told of (`num_to_keep=None`: no
deletions, no forced snapshots), and each trial deletes its own, on its own node, after each checkpointed report.

A checkpoint goes once it is not among the trial's `KEEP_BEST` best (by eval loss: the coordinator publishes from
these), and a later checkpoint of the trial has been in the driver's hands for `grace_s`. Why the grace: after a
driver crash, Tune restores each trial from the latest checkpoint named in its last uploaded snapshot, and refuses
one that is gone. A snapshot names a trial's latest checkpoint when it is taken. Tune takes one every
max(10 s, 19 x the time a snapshot takes) and uploads it in the background. So once a later checkpoint has been
registered for longer than a snapshot period plus its upload, no snapshot that a restore can read names the older
one. `GRACE_S` is 5 minutes: a long margin over the 10-30 s that a snapshot takes. A checkpoint's report returning
to the trial means the driver has registered it, because Tune lets the trial go on only after processing the
result.

When the sweep has finished and its best model is merged, the driver deletes what the grace left (`leftovers`), so
each trial ends with its `KEEP_BEST` best checkpoints and its latest (`KEPT_PER_TRIAL` at most), as under Tune's
retention. `kept_line` says so in the driver's log.
"""

import math
import time
from dataclasses import dataclass

KEEP_BEST = 2     # as Tune kept: the coordinator falls back on a trial's next best when its best is gone
KEPT_PER_TRIAL = KEEP_BEST + 1  # the most checkpoints a trial keeps: its KEEP_BEST best and its latest
GRACE_S = 300.0   # how long a superseded checkpoint stays, for a snapshot that may still name it


def kept_line(deleted: int) -> str:
    """The driver's line once `leftovers` of every trial are deleted."""
    return f"checkpoints: kept each trial's {KEEP_BEST} best and its latest; deleted {deleted} more"


@dataclass(frozen=True)
class Saved:
    """A checkpoint this trial saved: its order among the trial's checkpoints, its loss, when the driver had it (its
    report returned), and where it is."""
    order: int
    eval_loss: float
    registered_at: float
    checkpoint: object = None  # a ray.tune.Checkpoint: .path and .filesystem (pyarrow)


def stale(saved: list[Saved], now: float, keep_best: int = KEEP_BEST, grace_s: float = GRACE_S) -> list[Saved]:
    """The checkpoints to delete: not among the `keep_best` lowest losses (a NaN loss never is), and followed by a
    later checkpoint registered more than `grace_s` ago. The latest is never stale."""
    by_loss = sorted((s for s in saved if s.eval_loss == s.eval_loss), key=lambda s: (s.eval_loss, -s.order))
    best = {s.order for s in by_loss[:keep_best]}
    # a checkpoint is superseded from when the next one was registered; it is safe once that is grace_s ago
    ordered = sorted(saved, key=lambda s: s.order)
    return [s for s, later in zip(ordered, ordered[1:]) if s.order not in best and now - later.registered_at > grace_s]


class Retention:
    """The checkpoints one trial attempt saved, and the deletion of the stale ones (on the trial's own node).
    Checkpoints of an earlier attempt of the trial are left alone: their losses are not known here."""

    def __init__(self, keep_best: int = KEEP_BEST, grace_s: float = GRACE_S, clock=time.time):
        self.keep_best, self.grace_s, self.clock = keep_best, grace_s, clock
        self.saved: list[Saved] = []
        self.count = 0  # checkpoints saved so far: the order of the next one

    def saved_checkpoint(self, checkpoint, eval_loss: float) -> list[str]:
        """Record the checkpoint whose report just returned (Tune's stored copy), and delete the stale ones; their
        paths. A deletion that fails is tried again after the next report, and never fails the trial."""
        if checkpoint is None:
            return []
        self.saved.append(Saved(self.count, float(eval_loss), self.clock(), checkpoint))
        self.count += 1
        deleted = []
        for old in stale(self.saved, self.clock(), self.keep_best, self.grace_s):
            try:
                old.checkpoint.filesystem.delete_dir(old.checkpoint.path)
            except FileNotFoundError:
                pass  # already gone (by hand): nothing to keep track of
            except OSError:
                continue
            self.saved.remove(old)
            deleted.append(old.checkpoint.path)
        return deleted


def leftovers(checkpoints: list[tuple[object, float]], keep_best: int = KEEP_BEST) -> list[object]:
    """Once a sweep has finished: a trial's checkpoints (in the order saved, with their losses) other than its
    `keep_best` best and its latest, which is what Tune's own retention kept. The grace is over: no resume will
    read a snapshot of a finished sweep. These are what the grace, or an earlier attempt of the trial, left."""
    saved = [Saved(i, loss, 0.0, checkpoint) for i, (checkpoint, loss) in enumerate(checkpoints)]
    return [s.checkpoint for s in stale(saved, now=math.inf, keep_best=keep_best, grace_s=0.0)]
