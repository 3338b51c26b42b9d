"""The later validator's reference loss as SUBNET.md describes it, written out plainly: what the product's packed and
padded scoring is checked against."""

import torch
import torch.nn.functional as F

from trainables.scoring import REASONING_SYSTEM_PROMPT


def validator_reference_loss(model, tokenizer, question: str, reference: str) -> float:
    """compute_reference_loss as SUBNET.md describes the later validator, written out plainly."""
    context = tokenizer.apply_chat_template(
        [{"role": "system", "content": REASONING_SYSTEM_PROMPT}, {"role": "user", "content": question}],
        add_generation_prompt=True, tokenize=False)
    context_ids = tokenizer.encode(context, truncation=False)
    reference_ids = tokenizer.encode(reference, truncation=False)
    ids = torch.tensor([context_ids + reference_ids])
    logits = model(ids).logits[0, :-1]
    targets = ids[0, 1:]
    n = len(reference_ids)
    return F.cross_entropy(logits[-n:], targets[-n:]).item()
