"""When to publish: pure decisions, no clocks read and no I/O, so every rule is tested directly.

A model is published when (a) its eval loss is at most the upload threshold, (b) it beats the
model this hotkey already has on the chain by more than the validators' epsilon (a newer
commitment loses ties by 1%, so anything less loses ground), and (c) 20 minutes have passed
since the hotkey's last commitment, counted from the chain's block and from local state,
whichever is later.
"""

import enum
import math
from dataclasses import dataclass

from publishing.subnet.constants import BLOCK_SECONDS, PUBLISH_INTERVAL_S


class Action(enum.Enum):
    PUBLISH = "publish"  # upload, verify and commit now
    WAIT = "wait"        # the 20-minute window is closed: ask again at `not_before`
    SKIP = "skip"        # not this model (above the threshold, not better, refused, or its checkpoint is gone)
    RETRY = "retry"      # publishing failed half-way (upload or commit) or the best moved on: try again shortly


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    not_before: float | None = None  # with WAIT: the time the window opens


def beats(candidate_loss: float, published_loss: float | None, min_improvement: float) -> bool:
    if published_loss is None:
        return True
    return candidate_loss < published_loss * (1 - min_improvement)


def last_commit_time(now: float, local_committed_at: float | None, chain_block: int | None,
                     current_block: int | None, block_seconds: float = BLOCK_SECONDS) -> float | None:
    """The later of local state and the chain's record of the hotkey's last commitment."""
    times = []
    if local_committed_at is not None:
        times.append(local_committed_at)
    if chain_block is not None and current_block is not None:
        times.append(now - max(0, current_block - chain_block) * block_seconds)
    return max(times) if times else None


def decide(candidate_loss: float, *, threshold: float, published_loss: float | None, min_improvement: float,
           now: float, last_committed_at: float | None, interval_s: float = PUBLISH_INTERVAL_S,
           hold_until: float | None = None, hold_reason: str = "") -> Decision:
    """`hold_until`: our commitment that validators have not evaluated yet is kept until then (a later
    competition's evaluation delay, when the new model's margin is not worth restarting the wait)."""
    if not math.isfinite(candidate_loss):
        return Decision(Action.SKIP, f"eval loss {candidate_loss} is not a number")
    if candidate_loss > threshold:
        return Decision(Action.SKIP, f"eval loss {candidate_loss:.4f} is above --avg_loss_upload_threshold {threshold:g}")
    if not beats(candidate_loss, published_loss, min_improvement):
        return Decision(Action.SKIP, f"eval loss {candidate_loss:.4f} does not beat the published {published_loss:.4f} "
                                f"by more than {min_improvement:.0%}")
    if hold_until is not None and now < hold_until:
        return Decision(Action.WAIT, hold_reason, not_before=hold_until)
    if last_committed_at is not None and now < last_committed_at + interval_s:
        opens = last_committed_at + interval_s
        return Decision(Action.WAIT, f"the {interval_s / 60:g}-minute window opens in {opens - now:.0f} s", not_before=opens)
    return Decision(Action.PUBLISH, f"eval loss {candidate_loss:.4f} is the best and the window is open")
