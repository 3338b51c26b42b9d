"""The later validators' timing rules, as pure functions of blocks (issue 13).

- Epsilon, the advantage an earlier model keeps over a later one: a later model wins only with a loss below
  (1 - epsilon) x the earlier one's. Constant for the original competitions; for later ones it decays linearly from
  `start` to `end` over `decay_blocks` from the earlier model's commit block (taoverse's LinearDecay).
- The evaluation delay: validators evaluate a commitment only once it is `delay_blocks` old, and a new commitment
  restarts that wait.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Epsilon:
    start: float
    end: float | None = None        # None: constant at `start`
    decay_blocks: int = 0

    @property
    def floor(self) -> float:
        """The smallest margin validators ever demand: a gain below it never wins a comparison."""
        return self.start if self.end is None else min(self.start, self.end)

    def at(self, current_block: int, model_block: int) -> float:
        if self.end is None or self.decay_blocks <= 0:
            return self.start
        # a block before the model's own (a stale metagraph) counts as no decay, as validators do
        progress = min(max(current_block - model_block, 0) / self.decay_blocks, 1.0)
        return self.start - progress * (self.start - self.end)


def is_evaluated(commit_block: int, current_block: int, delay_blocks: int) -> bool:
    """Validators evaluate a commitment once it is delay_blocks old."""
    return current_block - commit_block >= delay_blocks


def worth_restarting_the_wait(committed_loss: float, new_loss: float, commit_block: int, current_block: int,
                              delay_blocks: int, epsilon: Epsilon) -> tuple[bool, str]:
    """Replace our own commitment that validators have not evaluated yet? Committing restarts the wait, so the blocks
    already waited are lost. It is worth it only when the new model is better by at least the margin validators
    demand of a later model (epsilon at a fresh commit): a smaller gain would be lost in their comparison anyway,
    and the committed model is evaluated sooner. An evaluated commitment is never held back by this rule."""
    if is_evaluated(commit_block, current_block, delay_blocks):
        return True, "the committed model has been evaluated"
    waited = current_block - commit_block
    margin = epsilon.at(current_block, current_block)
    gain = 1 - new_loss / committed_loss if committed_loss > 0 else 0.0
    if gain >= margin:
        return True, (f"{gain:.1%} better than the unevaluated commitment, at least epsilon {margin:.1%}: "
                      f"worth restarting the {delay_blocks}-block wait ({waited} blocks waited)")
    return False, (f"only {gain:.1%} better than the commitment validators have not evaluated yet ({waited} of "
                   f"{delay_blocks} blocks waited), under epsilon {margin:.1%}: keeping it")
