import math

import torch
from transformers import AutoModelForCausalLM

from trainables.data import collate
from trainables.evaluation import eval_loss, per_pair_losses


def validator_loss(model, ids, prompt_len):
    """SUBNET.md, verbatim: labels are ids with the prompt set to -100; the loss is model(...).loss."""
    ids = torch.tensor([ids.tolist()])
    labels = ids.clone()
    labels[:, :prompt_len] = -100
    return model(ids, labels=labels).loss.item()


def test_batched_eval_matches_the_validators_per_pair_loss(model_dir, sweep_data):
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).eval()
    split = sweep_data.eval
    with torch.no_grad():
        expected = [validator_loss(model, *split.pair(i)) for i in range(len(split))]
        batch = collate(split, range(len(split)))
        got = per_pair_losses(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                              batch["labels"])
    assert torch.allclose(got, torch.tensor(expected), atol=1e-4)
    # the average of per-pair means, not a mean over all tokens
    assert math.isclose(eval_loss(model, split, torch.device("cpu"), batch_size=5), sum(expected) / len(expected),
                        rel_tol=1e-5)


def test_per_pair_mean_is_not_a_token_mean():
    logits = torch.zeros(2, 4, 3)
    logits[0, :, 0] = 5.0  # row 0 predicts token 0 confidently
    labels = torch.tensor([[-100, 0, -100, -100], [-100, 1, 1, 1]])
    losses = per_pair_losses(logits, labels)
    assert losses.shape == (2,)
    assert losses[0] < 0.02 and math.isclose(losses[1].item(), math.log(3), rel_tol=1e-5)
