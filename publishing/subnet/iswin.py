"""Head-to-head, the validators' way: per-pair losses on the same pairs, the earlier commitment gets 1%."""

from dataclasses import asdict, dataclass

from publishing.subnet.constants import VALIDATOR_EPSILON


def iswin(loss_i: float, loss_j: float, block_i: float, block_j: float, epsilon: float = VALIDATOR_EPSILON) -> bool:
    """Does model i beat model j on one pair? (SUBNET.md, verbatim.)"""
    if block_i < block_j:
        loss_i *= 1 - epsilon
    if block_j < block_i:
        loss_j *= 1 - epsilon
    return loss_i < loss_j


@dataclass(frozen=True)
class Comparison:
    uid: int
    their_model: str
    pairs: int
    wins: int
    win_rate: float
    our_loss: float
    their_loss: float
    method: str = "per_pair"  # or "score": the later validators compare whole scores
    epsilon: float = VALIDATOR_EPSILON

    def line(self) -> str:
        if self.method == "score":
            verdict = "win" if self.wins else "no win"
            return (f"vs uid {self.uid} ({self.their_model}): score {self.our_loss:.4f} ours vs {self.their_loss:.4f} "
                    f"theirs over {self.pairs} samples; a win needs below {(1 - self.epsilon) * self.their_loss:.4f} "
                    f"(epsilon {self.epsilon:.4f}): {verdict}")
        return (f"vs uid {self.uid} ({self.their_model}): win rate {self.win_rate:.1%} over {self.pairs} pairs "
                f"({self.wins} wins), average loss {self.our_loss:.4f} ours vs {self.their_loss:.4f} theirs")

    def record(self) -> dict:
        return asdict(self)


def compare(ours: list[float], theirs: list[float], our_block: float, their_block: float, uid: int,
            their_model: str, epsilon: float = VALIDATOR_EPSILON) -> Comparison:
    """Our model not yet committed counts as committed later: theirs gets the epsilon advantage (the competition's,
    at the current block)."""
    if len(ours) != len(theirs) or not ours:
        raise ValueError("head-to-head needs the same, non-empty set of pairs for both models")
    wins = sum(iswin(a, b, our_block, their_block, epsilon) for a, b in zip(ours, theirs))
    return Comparison(uid=uid, their_model=their_model, pairs=len(ours), wins=wins, win_rate=wins / len(ours),
                      our_loss=sum(ours) / len(ours), their_loss=sum(theirs) / len(theirs))


def compare_scores(our_score: float, their_score: float, samples: int, uid: int, their_model: str,
                   epsilon: float) -> Comparison:
    """The later validators' comparison: whole competition scores, and ours (not yet committed, so later) wins
    only below (1 - epsilon) x theirs. Reported as one 'pair' won or lost."""
    win = our_score < their_score * (1 - epsilon)
    return Comparison(uid=uid, their_model=their_model, pairs=samples, wins=int(win), win_rate=float(win),
                      our_loss=our_score, their_loss=their_score, method="score", epsilon=epsilon)
