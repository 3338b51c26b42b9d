"""The validators' loss: mean over response tokens within each pair, then averaged over pairs.

A batch-level mean over all tokens would weight long responses more than the validators
do, and pick a different winner; so losses are reduced per pair first.
"""

import math

import torch
import torch.nn.functional as F

from trainables.data import TokenizedSplit, collate


def per_pair_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's mean next-token loss over its labelled (response) positions."""
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:]
    token_loss = F.cross_entropy(shifted_logits.transpose(1, 2), shifted_labels, ignore_index=-100, reduction="none")
    counted = (shifted_labels != -100).sum(dim=1)
    return token_loss.sum(dim=1) / counted.clamp(min=1)


@torch.no_grad()
def pair_losses(model, split: TokenizedSplit, device: torch.device, batch_size: int = 8) -> list[float]:
    """Every pair's loss, in split order: what head-to-head comparisons count wins over."""
    was_training = model.training
    model.eval()
    losses = []
    for start in range(0, len(split), batch_size):
        batch = collate(split, range(start, min(start + batch_size, len(split))))
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        losses.extend(per_pair_losses(logits, batch["labels"]).tolist())
    model.train(was_training)
    return losses


def eval_loss(model, split: TokenizedSplit, device: torch.device, batch_size: int = 8) -> float:
    """Average of the per-pair losses over the whole split (the number trials are ranked by)."""
    loss = sum(pair_losses(model, split, device, batch_size)) / len(split)
    return loss if math.isfinite(loss) else math.inf
