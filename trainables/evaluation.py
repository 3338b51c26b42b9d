"""The validators' loss: mean over response tokens within each pair, then averaged over pairs.

A batch-level mean over all tokens would weight long responses more than the validators
do, and pick a different winner; so losses are reduced per pair first, in training and in evaluation.

The loss is computed from the model's last hidden states in slices of LOSS_CHUNK_TOKENS positions,
each slice's logits made, scored and (in training) recomputed in the backward pass rather than kept.
A 16k-token micro-batch of a 128k-vocabulary model would otherwise hold 16k x 128k logits in bf16 and
again in fp32, about 20 GB. Models whose logits are more than `lm_head(hidden)` (Gemma 2's soft-capping,
Cohere's scale) take the plain path through `model(...).logits`.
"""

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from trainables.data import TokenizedSplit
from trainables.packing import IGNORE, eval_micro_batches, micro_batch
from trainables.trial_plan import LOSS_CHUNK_TOKENS

# Architectures whose causal-LM head is exactly `lm_head(model(...).last_hidden_state)`.
CHUNKED_LOSS_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2"})
MODEL_INPUTS = ("input_ids", "position_ids", "attention_mask")


def _causal_lm(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the model


def _scored(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE,
                           reduction="none").view(targets.shape)


def token_losses(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token loss at every position (0 where there is no target), shaped like batch["targets"]."""
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    causal_lm = _causal_lm(model)
    if causal_lm.config.model_type not in CHUNKED_LOSS_MODEL_TYPES:
        return _scored(lambda logits: logits, model(**inputs, use_cache=False).logits, batch["targets"])
    hidden = causal_lm.model(**inputs, use_cache=False).last_hidden_state
    # slices of the flattened tokens, so a padded batch of many rows holds LOSS_CHUNK_TOKENS logits at a time too
    flat_hidden, flat_targets = hidden.reshape(-1, hidden.shape[-1]), batch["targets"].reshape(-1)
    head = causal_lm.lm_head
    parts = []
    for start in range(0, flat_hidden.shape[0], LOSS_CHUNK_TOKENS):
        h = flat_hidden[start:start + LOSS_CHUNK_TOKENS]
        t = flat_targets[start:start + LOSS_CHUNK_TOKENS]
        if torch.is_grad_enabled():  # keep only the hidden slice; its logits are made again in the backward pass
            parts.append(checkpoint(_scored, head, h, t, use_reentrant=False))
        else:
            parts.append(_scored(head, h, t))
    return torch.cat(parts).view(batch["targets"].shape)


def per_pair_means(losses: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each pair's mean loss over its response tokens, in the micro-batch's pair order."""
    counted = batch["targets"] != IGNORE
    segments = batch["segments"][counted]
    num_pairs = int(batch["segments"].max()) + 1
    sums = torch.zeros(num_pairs, dtype=losses.dtype, device=losses.device).index_add_(0, segments, losses[counted])
    counts = torch.bincount(segments, minlength=num_pairs)
    return sums / counts.clamp(min=1)


@torch.no_grad()
def pair_losses(model, split: TokenizedSplit, device: torch.device, batch_size: int = 8, packing: bool = False,
                row_tokens: int = 0, micro_batch_tokens: int = 0) -> list[float]:
    """Every pair's loss, in split order: what head-to-head comparisons count wins over.

    Packed rows give each pair exactly the loss it gets alone (its own positions, no attention across pairs).
    """
    was_training = model.training
    model.eval()
    losses = []
    for rows in eval_micro_batches(split, packing, row_tokens, micro_batch_tokens, batch_size):
        batch = {k: v.to(device) for k, v in micro_batch(split, rows, packing).items()}
        losses.extend(per_pair_means(token_losses(model, batch), batch).tolist())
    model.train(was_training)
    return losses


def eval_loss(model, split: TokenizedSplit, device: torch.device, batch_size: int = 8, packing: bool = False,
              row_tokens: int = 0, micro_batch_tokens: int = 0) -> float:
    """Average of the per-pair losses over the whole split (the number trials are ranked by)."""
    loss = sum(pair_losses(model, split, device, batch_size, packing, row_tokens, micro_batch_tokens)) / len(split)
    return loss if math.isfinite(loss) else math.inf
