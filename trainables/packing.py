"""What a trial feeds the model: which pairs make each optimizer step, and how they sit in micro-batches.

An optimizer step is a number of *tokens* (`tokens_per_step`), not of rows: each epoch the pairs are shuffled
(seeded) and taken in that order until their tokens reach the budget. Within a step the pairs go into
micro-batches one of two ways:

- packed (the default): pairs share rows, each pair's position ids starting at 0, and rows share a micro-batch
  of at most `micro_batch_tokens` tokens. Restarting position ids become a block-diagonal causal mask (sdpa,
  eager), sequence boundaries (flash-attention 2, and PyTorch's varlen through trainables.attention) or a document
  block mask (FlexAttention), so no pair attends to another. sdpa and eager compute a row's whole T x T, masked
  blocks included, so their rows are as long as the longest pair; the others skip the masked blocks, so their
  micro-batch is one long row (trainables.attention.skips_masked_blocks);
- padded (`--packing off`): `batch_size` pairs a micro-batch, right-padded to the longest.

Either way a micro-batch carries `targets` already shifted (position t is labelled with token t+1 when that
token is a response token of the same pair, else -100) and `segments` (which pair of the micro-batch each
position belongs to), so the loss is the validators' own: a mean over each pair's response tokens, then a mean
over pairs. The same pairs in the same steps give the same loss, packed or padded.
"""

import numpy as np
import torch

from trainables.data import TokenizedSplit
from trainables.packing_plan import (StepPlan, auto_tokens_per_step, pack_first_fit, pairs_of,  # noqa: F401
                                     plan_steps, rows_per_micro_batch, steps_of_epoch)

IGNORE = -100


def _shifted_targets(ids: np.ndarray, prompt_len: int) -> np.ndarray:
    """targets[t] = ids[t + 1] where that token is a response token; the last position predicts nothing."""
    targets = np.full(len(ids), IGNORE, dtype=np.int64)
    targets[:-1] = ids[1:]
    targets[:max(prompt_len - 1, 0)] = IGNORE
    return targets


def packed_micro_batch(split: TokenizedSplit, rows) -> dict[str, torch.Tensor]:
    """Rows of pairs; position ids restart at each pair; no attention mask.

    Rows shorter than the longest are filled with padding that forms a sequence of its own (its positions
    restart at 0 too, it has no target and segment -1), so nothing attends to it and it scores nothing.
    """
    built = []
    k = 0
    for row in rows:
        ids, positions, targets, segments = [], [], [], []
        for i in row:
            pair_ids, prompt_len = split.pair(int(i))
            ids.append(pair_ids.astype(np.int64))
            positions.append(np.arange(len(pair_ids)))
            targets.append(_shifted_targets(pair_ids, prompt_len))
            segments.append(np.full(len(pair_ids), k))
            k += 1
        built.append([np.concatenate(part) for part in (ids, positions, targets, segments)])
    width = max(len(ids) for ids, *_ in built)
    batch = {name: torch.full((len(built), width), fill, dtype=torch.long)
             for name, fill in (("input_ids", 0), ("position_ids", 0), ("targets", IGNORE), ("segments", -1))}
    for r, parts in enumerate(built):
        n = len(parts[0])
        for name, values in zip(("input_ids", "position_ids", "targets", "segments"), parts):
            batch[name][r, :n] = torch.from_numpy(values)
        batch["position_ids"][r, n:] = torch.arange(width - n)
    return batch


def padded_micro_batch(split: TokenizedSplit, rows, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """One pair a row, right-padded to the longest; padding is masked and has no target."""
    pairs = [split.pair(int(i)) for row in rows for i in row]
    width = max(len(ids) for ids, _ in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(pairs), width), dtype=torch.long)
    targets = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
    segments = torch.full((len(pairs), width), -1, dtype=torch.long)
    for k, (ids, prompt_len) in enumerate(pairs):
        input_ids[k, :len(ids)] = torch.from_numpy(ids.astype(np.int64))
        attention_mask[k, :len(ids)] = 1
        targets[k, :len(ids)] = torch.from_numpy(_shifted_targets(ids, prompt_len))
        segments[k, :len(ids)] = k
    return {"input_ids": input_ids, "attention_mask": attention_mask, "targets": targets, "segments": segments}


def micro_batch(split: TokenizedSplit, rows, packing: bool) -> dict[str, torch.Tensor]:
    return packed_micro_batch(split, rows) if packing else padded_micro_batch(split, rows)


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Input tokens that belong to a pair (padding excluded)."""
    return int((batch["segments"] >= 0).sum())


def eval_micro_batches(split: TokenizedSplit, packing: bool, row_tokens: int, micro_batch_tokens: int,
                       batch_size: int) -> list[list[np.ndarray]]:
    """Evaluation micro-batches in split order (so per-pair losses come back in split order): packed, consecutive
    pairs fill rows of up to row_tokens and rows fill micro-batches; padded, batch_size pairs a micro-batch."""
    if not packing:
        return [[np.array([i]) for i in range(s, min(s + batch_size, len(split)))]
                for s in range(0, len(split), batch_size)]
    lengths = np.diff(split.offsets)
    rows, start, used = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and used + n > row_tokens:
            rows.append(np.arange(start, i))
            start, used = i, 0
        used += int(n)
    rows.append(np.arange(start, len(split)))
    per = rows_per_micro_batch(micro_batch_tokens, row_tokens)
    return [rows[k:k + per] for k in range(0, len(rows), per)]
