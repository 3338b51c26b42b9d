"""What a trial feeds the model: which pairs make each optimizer step, and how they sit in micro-batches.

An optimizer step is a number of *tokens* (`tokens_per_step`), not of rows: each epoch the pairs are shuffled
(seeded) and taken in that order until their tokens reach the budget. Within a step the pairs go into
micro-batches one of two ways:

- packed (the default): pairs share one row of at most `micro_batch_tokens` tokens, each pair's position ids
  starting at 0. transformers turns restarting position ids into a block-diagonal causal mask (sdpa, eager)
  or varlen boundaries (flash-attention 2), so no pair attends to another and no padding is computed;
- padded (`--packing off`): `batch_size` pairs a micro-batch, right-padded to the longest.

Either way a micro-batch carries `targets` already shifted (position t is labelled with token t+1 when that
token is a response token of the same pair, else -100) and `segments` (which pair of the micro-batch each
position belongs to), so the loss is the validators' own: a mean over each pair's response tokens, then a mean
over pairs. The same pairs in the same steps give the same loss, packed or padded.
"""

from dataclasses import dataclass

import numpy as np
import torch

from trainables.data import TokenizedSplit

IGNORE = -100


@dataclass(frozen=True)
class StepPlan:
    """Every optimizer step of a trial, as micro-batches of pair indices, over all epochs."""
    steps: list[list[np.ndarray]]

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


def plan_steps(lengths: np.ndarray, tokens_per_step: int, epochs: int, seed: int, packing: bool,
               micro_batch_tokens: int, batch_size: int) -> StepPlan:
    """The whole trial's steps. A pure function of its arguments: a resumed trial sees exactly the same steps."""
    steps = []
    for epoch in range(epochs):
        for step in steps_of_epoch(epoch_order(len(lengths), seed, epoch), lengths, tokens_per_step):
            if packing:
                steps.append(pack_first_fit(step, lengths, micro_batch_tokens))
            else:
                steps.append([step[k:k + batch_size] for k in range(0, len(step), batch_size)])
    return StepPlan(steps)


def auto_tokens_per_step(lengths: np.ndarray, pairs_per_step: int) -> int:
    """The default step: as many tokens as `batch_size * accumulation_steps` pairs of average length, so a
    step means what it meant when steps were counted in pairs."""
    return max(1, round(float(np.mean(lengths)) * pairs_per_step))


def _shifted_targets(ids: np.ndarray, prompt_len: int) -> np.ndarray:
    """targets[t] = ids[t + 1] where that token is a response token; the last position predicts nothing."""
    targets = np.full(len(ids), IGNORE, dtype=np.int64)
    targets[:-1] = ids[1:]
    targets[:max(prompt_len - 1, 0)] = IGNORE
    return targets


def packed_micro_batch(split: TokenizedSplit, pairs) -> dict[str, torch.Tensor]:
    """One row holding every pair; position ids restart at each pair; no attention mask, no padding."""
    ids, positions, targets, segments = [], [], [], []
    for k, i in enumerate(pairs):
        pair_ids, prompt_len = split.pair(int(i))
        ids.append(pair_ids)
        positions.append(np.arange(len(pair_ids)))
        targets.append(_shifted_targets(pair_ids, prompt_len))
        segments.append(np.full(len(pair_ids), k))
    as_row = lambda parts: torch.from_numpy(np.concatenate(parts).astype(np.int64))[None]  # noqa: E731
    return {"input_ids": as_row(ids), "position_ids": as_row(positions), "targets": as_row(targets),
            "segments": as_row(segments)}


def padded_micro_batch(split: TokenizedSplit, pairs, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """One row per pair, right-padded to the longest; padding is masked and has no target."""
    rows = [split.pair(int(i)) for i in pairs]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    segments = torch.zeros((len(rows), width), dtype=torch.long)
    for k, (ids, prompt_len) in enumerate(rows):
        input_ids[k, :len(ids)] = torch.from_numpy(ids.astype(np.int64))
        attention_mask[k, :len(ids)] = 1
        targets[k, :len(ids)] = torch.from_numpy(_shifted_targets(ids, prompt_len))
        segments[k] = k
    return {"input_ids": input_ids, "attention_mask": attention_mask, "targets": targets, "segments": segments}


def micro_batch(split: TokenizedSplit, pairs, packing: bool) -> dict[str, torch.Tensor]:
    return packed_micro_batch(split, pairs) if packing else padded_micro_batch(split, pairs)


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Input tokens that belong to a pair (padding excluded)."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def segment_lengths(split: TokenizedSplit, pairs) -> list[int]:
    return [int(split.offsets[i + 1] - split.offsets[i]) for i in pairs]


def eval_rows(split: TokenizedSplit, packing: bool, row_tokens: int, batch_size: int) -> list[np.ndarray]:
    """Evaluation batches in split order (packed: consecutive pairs up to row_tokens a row)."""
    if not packing:
        return [np.arange(s, min(s + batch_size, len(split))) for s in range(0, len(split), batch_size)]
    lengths = np.diff(split.offsets)
    rows, start, used = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and used + n > row_tokens:
            rows.append(np.arange(start, i))
            start, used = i, 0
        used += int(n)
    rows.append(np.arange(start, len(split)))
    return rows
