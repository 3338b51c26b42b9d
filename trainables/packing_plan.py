"""Which pairs make each optimizer step of a trial, and how they sit in rows and micro-batches: pure numpy, so the
driver plans steps, evaluations and memory without torch (trainables.packing builds the tensors from these plans).
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StepPlan:
    """Every optimizer step of a trial, over all epochs: a step is a list of micro-batches (one forward pass each),
    a micro-batch a list of rows, a row an array of pair indices (packed: several pairs; padded: one)."""
    steps: list[list[list[np.ndarray]]]

    def __len__(self) -> int:
        return len(self.steps)


def epoch_order(num_pairs: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_pairs)


def steps_of_epoch(order: np.ndarray, lengths: np.ndarray, tokens_per_step: int) -> list[np.ndarray]:
    """Consecutive pairs of `order`, cut where their tokens reach tokens_per_step (the last step may be short)."""
    ends = np.cumsum(lengths[order])
    steps, start, base = [], 0, 0
    while start < len(order):
        # the first pair at which this step's tokens reach the budget closes it
        stop = int(np.searchsorted(ends, base + tokens_per_step, side="left")) + 1
        stop = min(max(stop, start + 1), len(order))
        steps.append(order[start:stop])
        base, start = int(ends[stop - 1]), stop
    return steps


def pack_first_fit(pairs: np.ndarray, lengths: np.ndarray, row_tokens: int) -> list[np.ndarray]:
    """Pairs into rows of at most row_tokens tokens, longest first, each into the first row with room.

    First-fit decreasing leaves few, full rows: fewer forward passes, the same tokens.
    A pair longer than row_tokens gets a row of its own.
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(pairs.tolist(), key=lambda p: -int(lengths[p])):
        n = int(lengths[i])
        slot = next((k for k, free in enumerate(room) if free >= n), None)
        if slot is None:
            rows.append([i])
            room.append(row_tokens - n)
        else:
            rows[slot].append(i)
            room[slot] -= n
    return [np.array(row, dtype=np.int64) for row in rows]


def rows_per_micro_batch(micro_batch_tokens: int, row_tokens: int) -> int:
    return max(1, micro_batch_tokens // row_tokens)


def plan_steps(lengths: np.ndarray, tokens_per_step: int, epochs: int, seed: int, packing: bool,
               micro_batch_tokens: int, batch_size: int, row_tokens: int) -> StepPlan:
    """The whole trial's steps. A pure function of its arguments: a resumed trial sees exactly the same steps.

    Which pairs make a step depends only on the token budget, never on the layout, so the number of steps (the
    scheduler's horizon) is the same whatever the rows.
    """
    per_micro_batch = rows_per_micro_batch(micro_batch_tokens, row_tokens) if packing else batch_size
    steps = []
    for epoch in range(epochs):
        for step in steps_of_epoch(epoch_order(len(lengths), seed, epoch), lengths, tokens_per_step):
            rows = pack_first_fit(step, lengths, row_tokens) if packing else [step[k:k + 1] for k in range(len(step))]
            steps.append([rows[k:k + per_micro_batch] for k in range(0, len(rows), per_micro_batch)])
    return StepPlan(steps)


def auto_tokens_per_step(lengths: np.ndarray, pairs_per_step: int) -> int:
    """The default step: as many tokens as `batch_size * accumulation_steps` pairs of average length, so a
    step means what it meant when steps were counted in pairs."""
    return max(1, round(float(np.mean(lengths)) * pairs_per_step))


def pairs_of(rows) -> np.ndarray:
    return np.concatenate([np.asarray(row) for row in rows])
